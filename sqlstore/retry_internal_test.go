package sqlstore

import (
	"errors"
	"fmt"
	"testing"
)

// mysqlError has the shape of github.com/go-sql-driver/mysql's
// *MySQLError, which exposes its SQLSTATE as a field, not a method.
type mysqlError struct {
	Number   uint16
	SQLState [5]byte
	Message  string
}

func (e *mysqlError) Error() string { return e.Message }

type pgError struct{ code string }

func (e *pgError) Error() string    { return "pg " + e.code }
func (e *pgError) SQLState() string { return e.code }

// Deadlock victims and serialization failures are retried, from either
// kind of driver error and through wrapping; other errors are not.
func TestRetryableDeadlocks(t *testing.T) {
	state := func(s string) (b [5]byte) { copy(b[:], s); return b }
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&mysqlError{Number: 1213, SQLState: state("40001"), Message: "Deadlock found"}, true},
		{fmt.Errorf("exec: %w", &mysqlError{Number: 1213, SQLState: state("40001")}), true},
		{&mysqlError{Number: 1205, SQLState: state("HY000"), Message: "Lock wait timeout"}, false},
		{&mysqlError{Number: 1062, SQLState: state("23000"), Message: "Duplicate entry"}, false},
		{(*mysqlError)(nil), false},
		{&pgError{"40001"}, true},
		{&pgError{"40P01"}, true},
		{fmt.Errorf("q: %w", &pgError{"23505"}), false},
		{errors.New("40001"), false},
		{nil, false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%#v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
