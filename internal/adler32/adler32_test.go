package adler32

import (
	"bytes"
	"hash/adler32"
	"math/rand/v2"
	"testing"
)

// The checksum is hash/adler32's on every length around the vector
// block and the reduction interval, on random bytes and on 0xff (the
// largest sums, where an unreduced sum would overflow first).
func TestChecksumMatchesHashAdler32(t *testing.T) {
	const nmax = 5552 // bytes between reductions
	rng := rand.New(rand.NewPCG(1, 32))
	random := make([]byte, 4*nmax+100)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	full := bytes.Repeat([]byte{0xff}, len(random))
	var lengths []int
	for n := range 100 {
		lengths = append(lengths, n)
	}
	for _, base := range []int{nmax, 2 * nmax, 3 * nmax, 4 * nmax} {
		for n := base - 40; n <= base+40; n++ {
			lengths = append(lengths, n)
		}
	}
	for range 200 {
		lengths = append(lengths, rng.IntN(len(random)+1))
	}
	for _, data := range [][]byte{random, full} {
		for _, n := range lengths {
			for _, off := range []int{0, 1, 7} { // unaligned starts
				if off+n > len(data) {
					continue
				}
				p := data[off : off+n]
				if got, want := Checksum(p), adler32.Checksum(p); got != want {
					t.Fatalf("%d bytes from %d (first %#x): %#08x, hash/adler32 %#08x", n, off, data[0], got, want)
				}
			}
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, c := range []struct {
		name string
		n    int
	}{{"digit28", 28 * 29}, {"rgb256", 256 * (1 + 256*3)}} {
		data := make([]byte, c.n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(c.n))
			for b.Loop() {
				Checksum(data)
			}
		})
		b.Run(c.name+"/hash_adler32", func(b *testing.B) {
			b.SetBytes(int64(c.n))
			for b.Loop() {
				adler32.Checksum(data)
			}
		})
	}
}
