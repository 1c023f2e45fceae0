//go:build !purego

package adler32

import "golang.org/x/sys/cpu"

var haveSSSE3 = cpu.X86.HasSSSE3

// checksumBlocks adds data's whole 32-byte blocks to the sums, or, without
// SSSE3, nothing.
func checksumBlocks(s1, s2 uint32, data []byte) (uint32, uint32) {
	if !haveSSSE3 {
		return sums(s1, s2, data[:len(data)&^(blockSize-1)])
	}
	for n := len(data) / blockSize; n > 0; {
		step := min(n, nmax/blockSize)
		s1, s2 = blocksSSSE3(s1, s2, &data[0], step)
		s1 %= mod
		s2 %= mod
		data = data[step*blockSize:]
		n -= step
	}
	return s1, s2
}

// blocksSSSE3 adds n blocks of 32 bytes at p to the sums, unreduced;
// n ≤ nmax/32 and s1, s2 < mod keep them within 32 bits.
//
//go:noescape
func blocksSSSE3(s1, s2 uint32, p *byte, n int) (uint32, uint32)
