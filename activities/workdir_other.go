//go:build !unix

package activities

import (
	"errors"
	"os"
)

// lockFile creates the file at path; without flock no other process can
// tell it is in use, and RemoveStaleWork removes nothing.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

func tryLockFile(string) (func(), error) { return nil, errors.New("no file locks here") }
