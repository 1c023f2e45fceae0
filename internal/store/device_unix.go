//go:build unix && !linux

package store

import (
	"os"
	"path/filepath"
	"syscall"
)

// device returns the ID of the filesystem that holds path, or its nearest
// existing parent.
func device(path string) (uint64, bool) {
	for {
		fi, err := os.Stat(path)
		if err == nil {
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				return 0, false
			}
			return uint64(st.Dev), true
		}
		parent := filepath.Dir(path)
		if parent == path {
			return 0, false
		}
		path = parent
	}
}
