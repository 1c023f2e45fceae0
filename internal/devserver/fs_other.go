//go:build !linux

package devserver

// networkFS cannot tell filesystems apart here; the state folder is taken
// to be on a local disk.
func networkFS(string) bool { return false }
