package idem

import (
	"errors"
	"time"
)

// Errors returned by a Runner (and Do).
var (
	// ErrInProgress: another caller holds the key and is still running. The
	// error returned is an *InProgressError, which tells how long its lease
	// has left.
	ErrInProgress = errors.New("idem: key in progress")
	// ErrFingerprintMismatch: the key was already used with another
	// fingerprint.
	ErrFingerprintMismatch = errors.New("idem: key reused with a different fingerprint")
	// ErrStoreUnavailable wraps every error of the store met while claiming
	// a key or recording a result.
	ErrStoreUnavailable = errors.New("idem: store unavailable")
	// ErrInvalidKey is returned, wrapped with the reason, for a key that is
	// empty, too long (WithMaxKeyLength), or not visible ASCII.
	ErrInvalidKey = errors.New("idem: invalid key")
)

// InProgressError is returned by Runner.Do (and Do) when the key is held by
// another running caller. errors.Is(err, ErrInProgress) holds for it.
type InProgressError struct {
	// RetryAfter is the time left on the holder's lease: after it the key
	// is either completed or free again.
	RetryAfter time.Duration
}

// Error says that the key is in progress and when its lease ends.
func (e *InProgressError) Error() string {
	return "idem: key in progress, lease ends in " + e.RetryAfter.String()
}

// Is reports whether target is ErrInProgress.
func (e *InProgressError) Is(target error) bool { return target == ErrInProgress }

// ErrLockLost is returned by Complete, Release and Renew when the caller no
// longer owns the key: its lease expired, or another owner has claimed it
// since. A stale owner can therefore never overwrite or delete a newer
// owner's record.
var ErrLockLost = errors.New("idem: lock lost")

// ErrCorruptRecord is returned by DecodeResponse for data that is not an
// encoded Response of a known format version. Stores wrap it in the error
// of a Claim that met a record they cannot read (see Store); such a record
// is answered 503, never run over.
var ErrCorruptRecord = errors.New("idem: corrupt or unknown record format")
