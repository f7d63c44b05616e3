package fs

import (
	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// Compile-time checks of the go-fuse interfaces each type implements.

var _ = (gofs.InodeEmbedder)((*node)(nil))
var _ = (gofs.InodeEmbedder)((*Root)(nil))

// Directory and namespace operations (node_dir.go).
var _ = (gofs.NodeLookuper)((*node)(nil))
var _ = (gofs.NodeOpendirHandler)((*node)(nil))
var _ = (gofs.NodeMkdirer)((*node)(nil))
var _ = (gofs.NodeMknoder)((*node)(nil))
var _ = (gofs.NodeSymlinker)((*node)(nil))
var _ = (gofs.NodeLinker)((*node)(nil))
var _ = (gofs.NodeUnlinker)((*node)(nil))
var _ = (gofs.NodeRmdirer)((*node)(nil))
var _ = (gofs.NodeRenamer)((*node)(nil))
var _ = (gofs.NodeReadlinker)((*node)(nil))
var _ = (gofs.NodeStatfser)((*node)(nil))
var _ = (gofs.NodeOnForgetter)((*node)(nil))

// Opening files (node_open.go).
var _ = (gofs.NodeOpener)((*node)(nil))
var _ = (gofs.NodeCreater)((*node)(nil))
var _ = (gofs.NodeTmpfiler)((*node)(nil))

// Attributes (node_attr.go) and extended attributes (node_xattr.go).
var _ = (gofs.NodeGetattrer)((*node)(nil))
var _ = (gofs.NodeSetattrer)((*node)(nil))
var _ = (gofs.NodeStatxer)((*node)(nil))
var _ = (gofs.NodeGetxattrer)((*node)(nil))
var _ = (gofs.NodeSetxattrer)((*node)(nil))
var _ = (gofs.NodeRemovexattrer)((*node)(nil))
var _ = (gofs.NodeListxattrer)((*node)(nil))

// Encrypted and protected files (file.go). cryptFile must never be a
// gofs.FilePassthroughFder; TestCryptFileNoPassthrough checks that.
var _ = (gofs.FileReader)((*cryptFile)(nil))
var _ = (gofs.FileWriter)((*cryptFile)(nil))
var _ = (gofs.FileFlusher)((*cryptFile)(nil))
var _ = (gofs.FileFsyncer)((*cryptFile)(nil))
var _ = (gofs.FileReleaser)((*cryptFile)(nil))
var _ = (gofs.FileLseeker)((*cryptFile)(nil))
var _ = (gofs.FileAllocater)((*cryptFile)(nil))
var _ = (gofs.FileGetlker)((*cryptFile)(nil))
var _ = (gofs.FileSetlker)((*cryptFile)(nil))
var _ = (gofs.FileSetlkwer)((*cryptFile)(nil))

// Plaintext files with non-protected names (file.go).
var _ = (gofs.FilePassthroughFder)((*passthroughFile)(nil))
var _ = (gofs.FileReader)((*passthroughFile)(nil))
var _ = (gofs.FileReleaser)((*passthroughFile)(nil))

// Directories (node_dir.go).
var _ = (gofs.FileReaddirenter)((*dirHandle)(nil))
var _ = (gofs.FileSeekdirer)((*dirHandle)(nil))
var _ = (gofs.FileFsyncdirer)((*dirHandle)(nil))
var _ = (gofs.FileReleasedirer)((*dirHandle)(nil))
