//go:build unix && !linux

package store

// device names the filesystem that holds path, or its nearest existing
// parent: a rename fails across filesystems.
func device(path string) (string, bool) { return statDevice(path) }
