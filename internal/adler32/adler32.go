// Package adler32 computes zlib's Adler-32 checksum, as hash/adler32's
// Checksum does, with vector instructions where the CPU has them.
//
// A PNG decode checks the checksum of every inflated byte. hash/adler32
// takes about a nanosecond a byte here, which was a quarter of decoding a
// 28×28 digit and a fifth of decoding a 256×256 photo; SSSE3 sums 32 bytes
// a step.
package adler32

const (
	mod = 65521 // the largest prime below 2^16
	// nmax is the most bytes that can be summed before s2 could overflow
	// 32 bits: 255·n·(n+1)/2 + (n+1)·(mod−1) ≤ 2^32−1.
	nmax = 5552
)

// Checksum returns the Adler-32 checksum of data.
func Checksum(data []byte) uint32 {
	s1, s2 := checksumBlocks(1, 0, data)
	s1, s2 = sums(s1, s2, data[len(data)&^(blockSize-1):])
	return s2<<16 | s1
}

// blockSize is what the vector loop sums a step: checksumBlocks adds the
// whole blocks of data to the sums, and Checksum the rest.
const blockSize = 32

// sums adds data to the sums a byte at a time, reducing every nmax bytes.
func sums(s1, s2 uint32, data []byte) (uint32, uint32) {
	for len(data) > 0 {
		p := data[:min(len(data), nmax)]
		data = data[len(p):]
		for _, x := range p {
			s1 += uint32(x)
			s2 += s1
		}
		s1 %= mod
		s2 %= mod
	}
	return s1, s2
}
