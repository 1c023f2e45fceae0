//go:build !amd64 || purego

package adler32

import "hash/adler32"

// Checksum returns the Adler-32 checksum of data.
func Checksum(data []byte) uint32 { return adler32.Checksum(data) }
