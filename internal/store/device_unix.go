//go:build unix && !linux

package store

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// device names the filesystem that holds path, or its nearest existing
// parent: a rename fails across filesystems.
func device(path string) (string, bool) {
	for {
		fi, err := os.Stat(path)
		if err == nil {
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				return "", false
			}
			return strconv.FormatUint(uint64(st.Dev), 10), true
		}
		parent := filepath.Dir(path)
		if parent == path {
			return "", false
		}
		path = parent
	}
}
