package inflate

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// samples are inputs of the kinds a PNG's rows hold and of the kinds that
// exercise each part of the format: incompressible bytes (stored blocks),
// short runs (fixed codes), long repeats (overlapping copies), and more
// than one block.
func samples() map[string][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 70000)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	digit := make([]byte, 29*28) // a filter byte and 28 gray pixels per row
	for y := range 28 {
		for x := range 28 {
			if r := (x-14)*(x-14) + (y-14)*(y-14); r > 25 && r < 80 {
				digit[y*29+1+x] = uint8(150 + x + 2*y)
			}
		}
	}
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog. "), 3000)
	mixed := append(append(append([]byte{}, text[:20000]...), random[:30000]...), text[:40000]...)
	skewed := make([]byte, 100000) // long codes: a few symbols common, many rare
	for i := range skewed {
		v := rng.ExpFloat64() * 3
		skewed[i] = byte(min(v, 255))
	}
	return map[string][]byte{
		"empty": {}, "one": {42}, "random": random, "digit": digit, "zeros": make([]byte, 100000),
		"text": text, "mixed": mixed, "skewed": skewed, "short": []byte("abcabcabcabd"),
	}
}

func compress(t testing.TB, data []byte, level int) []byte {
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

var levels = []int{flate.HuffmanOnly, flate.NoCompression, flate.BestSpeed, 5, flate.BestCompression}

// TestRoundTrip decodes what compress/flate encodes, at every level, and
// reads exactly the stream when other bytes follow it.
func TestRoundTrip(t *testing.T) {
	var d Decoder
	kinds := map[uint64]bool{}
	for name, data := range samples() {
		for _, level := range levels {
			z := compress(t, data, level)
			kinds[uint64(z[0]>>1&3)] = true
			for _, tail := range [][]byte{nil, []byte("IEND and more")} {
				src := append(append([]byte{}, z...), tail...)
				dst := make([]byte, len(data))
				w, r, err := d.Decode(dst, src)
				if err != nil || w != len(data) || r != len(z) || !bytes.Equal(dst, data) {
					t.Fatalf("%s, level %d, %d trailing bytes: wrote %d of %d, read %d of %d, err %v, same %v",
						name, level, len(tail), w, len(data), r, len(z), err, bytes.Equal(dst[:w], data))
				}
			}
		}
	}
	for kind, name := range []string{"stored", "fixed", "dynamic"} {
		if !kinds[uint64(kind)] {
			t.Errorf("no sample starts with a %s block", name)
		}
	}
}

func TestShortDst(t *testing.T) {
	var d Decoder
	for name, data := range samples() {
		if len(data) == 0 {
			continue
		}
		for _, level := range levels {
			z := compress(t, data, level)
			dst := make([]byte, len(data)-1)
			if _, _, err := d.Decode(dst, z); !errors.Is(err, ErrShortDst) {
				t.Errorf("%s, level %d: one byte short: err %v, want ErrShortDst", name, level, err)
			}
		}
	}
}

func TestTruncated(t *testing.T) {
	var d Decoder
	data := samples()["mixed"]
	for _, level := range levels {
		z := compress(t, data, level)
		for _, n := range []int{0, 1, len(z) / 2, len(z) - 1} {
			dst := make([]byte, len(data))
			if _, _, err := d.Decode(dst, z[:n]); err == nil {
				t.Errorf("level %d: %d of %d bytes decoded without error", level, n, len(z))
			}
		}
	}
}

// FuzzDecode holds Decode to its promise: whatever it decodes,
// compress/flate decodes to the same bytes from the same input.
func FuzzDecode(f *testing.F) {
	for _, data := range samples() {
		if len(data) > 2000 {
			data = data[:2000]
		}
		for _, level := range levels {
			f.Add(compress(f, data, level), len(data))
		}
	}
	var d Decoder
	f.Fuzz(func(t *testing.T, src []byte, size int) {
		if size < 0 || size > 1<<16 {
			return
		}
		dst := make([]byte, size)
		w, r, err := d.Decode(dst, src)
		if err != nil {
			return
		}
		in := bytes.NewReader(src)
		want, werr := io.ReadAll(flate.NewReader(in))
		if werr != nil {
			t.Fatalf("decoded %d bytes from %x; compress/flate: %v", w, src, werr)
		}
		if !bytes.Equal(dst[:w], want) {
			t.Fatalf("decoded %x from %x; compress/flate %x", dst[:w], src, want)
		}
		if read := len(src) - in.Len(); read != r {
			t.Fatalf("read %d bytes of %x; compress/flate %d", r, src, read)
		}
	})
}

// BenchmarkDecode decodes a digit's rows (what a PNG of the demo's holds),
// English text (long matches) and a mix with incompressible bytes, with
// this package and with compress/flate.
func BenchmarkDecode(b *testing.B) {
	for _, name := range []string{"digit", "text", "mixed"} {
		data := samples()[name]
		z := compress(b, data, flate.DefaultCompression)
		dst := make([]byte, len(data))
		b.Run(name+"/inflate", func(b *testing.B) {
			var d Decoder
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, _, err := d.Decode(dst, z); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/compress_flate", func(b *testing.B) {
			r := flate.NewReader(bytes.NewReader(z))
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				r.(flate.Resetter).Reset(bytes.NewReader(z), nil)
				if _, err := io.ReadFull(r, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
