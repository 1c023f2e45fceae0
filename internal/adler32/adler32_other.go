//go:build !amd64 || purego

package adler32

// checksumBlocks adds data's whole 32-byte blocks to the sums.
func checksumBlocks(s1, s2 uint32, data []byte) (uint32, uint32) {
	return sums(s1, s2, data[:len(data)&^(blockSize-1)])
}
