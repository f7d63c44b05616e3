package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"reflect"
	"sync"
	"unsafe"
)

// AES-256-GCM instances in locked memory.
//
// crypto/aes.NewCipher returns a heap object holding the expanded key
// (its first 32 bytes are the key, as native-endian words), and
// cipher.NewGCM copies it by value into another heap object with the
// GHASH table. The garbage collector never moves or zeroes either, so a
// dropped cipher leaves its key in freed memory. Both types hold no Go
// pointers (gcmLayout checks that at run time, walking the types), so a
// copy of the GCM object can live in a slot of locked memory: newGCMIn
// builds the cipher, copies the GCM object into the slot, zeroes both heap
// objects, and returns an AEAD whose methods run on the slot's copy.
// Zeroing the slot then destroys the cipher (a use after that panics in
// crypto/cipher on the zero nonce size instead of encrypting).
//
// If a future Go changes the types so that they hold pointers, or makes
// the GCM object larger than a slot, newGCMIn returns the heap instance
// instead and wipeAEAD zeroes it when it is dropped; TestGCMInSlot fails
// so the change is noticed.

// gcmLayout is the result of the one-time check of the standard library's
// AES-GCM types.
var gcmLayout struct {
	once    sync.Once
	inSlot  bool         // a GCM object can be copied into a slot
	gcmType reflect.Type // the GCM object's type (*gcmType is the AEAD)
	ptrType reflect.Type // *gcmType
	why     string       // why not, when !inSlot
}

func checkGCMLayout() {
	gcmLayout.once.Do(func() {
		var key [KeySize]byte
		b, err := aes.NewCipher(key[:])
		if err != nil {
			gcmLayout.why = err.Error()
			return
		}
		a, err := cipher.NewGCM(b)
		if err != nil {
			gcmLayout.why = err.Error()
			return
		}
		bt, at := reflect.TypeOf(b), reflect.TypeOf(a)
		switch {
		case bt.Kind() != reflect.Pointer || at.Kind() != reflect.Pointer:
			gcmLayout.why = fmt.Sprintf("%v or %v is not a pointer", bt, at)
		case !pointerFree(bt.Elem()) || !pointerFree(at.Elem()):
			gcmLayout.why = fmt.Sprintf("%v or %v holds pointers", bt.Elem(), at.Elem())
		case at.Elem().Size() > slotSize:
			gcmLayout.why = fmt.Sprintf("%v is %d bytes, more than a slot", at.Elem(), at.Elem().Size())
		case at.Elem().Align() > 64:
			gcmLayout.why = fmt.Sprintf("%v needs %d-byte alignment", at.Elem(), at.Elem().Align())
		default:
			gcmLayout.inSlot, gcmLayout.gcmType, gcmLayout.ptrType = true, at.Elem(), at
		}
	})
}

// pointerFree reports whether values of t hold no Go pointers (so a copy
// may live outside the Go heap).
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return t.Len() == 0 || pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// newGCMIn returns AES-256-GCM under key, living in slot (slotSize bytes
// of locked memory, zeroed). key should itself be in locked memory. The
// standard library's heap objects are zeroed before it returns. inSlot is
// false when the layout check failed and the AEAD is the heap instance
// (wipe it with wipeAEAD).
func newGCMIn(slot, key []byte) (a cipher.AEAD, inSlot bool, err error) {
	checkGCMLayout()
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, false, fmt.Errorf("crypto: aes: %w", err)
	}
	h, err := cipher.NewGCM(b)
	wipeValue(b) // the GCM object holds its own copy
	if err != nil {
		return nil, false, fmt.Errorf("crypto: gcm: %w", err)
	}
	if !gcmLayout.inSlot || reflect.TypeOf(h) != gcmLayout.ptrType || len(slot) < slotSize {
		return h, false, nil
	}
	dst := reflect.NewAt(gcmLayout.gcmType, unsafe.Pointer(unsafe.SliceData(slot)))
	src := reflect.ValueOf(h).Elem()
	dst.Elem().Set(src)
	src.SetZero()
	return dst.Interface().(cipher.AEAD), true, nil
}

// wipeAEAD zeroes a heap AEAD from newGCMIn (inSlot false); a slot's AEAD
// is wiped by zeroing the slot.
func wipeAEAD(a cipher.AEAD) { wipeValue(a) }

// wipeValue zeroes what x points to, if it is a pointer to a struct.
func wipeValue(x any) {
	v := reflect.ValueOf(x)
	if v.Kind() == reflect.Pointer && !v.IsNil() && v.Elem().Kind() == reflect.Struct && v.Elem().CanSet() {
		v.Elem().SetZero()
	}
}
