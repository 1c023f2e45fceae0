//go:build !purego

package adler32

import (
	"hash/adler32"

	"golang.org/x/sys/cpu"
)

var haveSSSE3 = cpu.X86.HasSSSE3

const (
	mod = 65521 // the largest prime below 2^16
	// nmax is the most bytes that can be summed before s2 could overflow
	// 32 bits: 255·n·(n+1)/2 + (n+1)·(mod−1) ≤ 2^32−1.
	nmax = 5552
	// blockSize is what the vector loop sums a step.
	blockSize = 32
)

// Checksum returns the Adler-32 checksum of data.
func Checksum(data []byte) uint32 {
	if !haveSSSE3 {
		return adler32.Checksum(data)
	}
	s1, s2 := uint32(1), uint32(0)
	for n := len(data) / blockSize; n > 0; {
		step := min(n, nmax/blockSize)
		s1, s2 = blocksSSSE3(s1, s2, &data[0], step)
		s1 %= mod
		s2 %= mod
		data = data[step*blockSize:]
		n -= step
	}
	for _, x := range data { // fewer than 32 bytes
		s1 += uint32(x)
		s2 += s1
	}
	return s2%mod<<16 | s1%mod
}

// blocksSSSE3 adds n blocks of 32 bytes at p to the sums, unreduced;
// n ≤ nmax/32 and s1, s2 < mod keep them within 32 bits.
//
//go:noescape
func blocksSSSE3(s1, s2 uint32, p *byte, n int) (uint32, uint32)
