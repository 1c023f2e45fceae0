//go:build !unix

package store

// device cannot tell filesystems apart here: every file:// bucket writes
// its temporary files beside their objects.
func device(string) (string, bool) { return "", false }
