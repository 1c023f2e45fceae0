package half

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Every half converts to a float32 that converts back to it (NaNs made
// quiet), and the vector path agrees with the Go code on every one.
func TestToFloat32(t *testing.T) {
	src := make([]uint16, 1<<16)
	for i := range src {
		src[i] = uint16(i)
	}
	got := make([]float32, len(src))
	ToFloat32s(got, src)
	for i, h := range src {
		f := ToFloat32(h)
		if math.Float32bits(got[i]) != math.Float32bits(f) {
			t.Fatalf("%#04x: ToFloat32s %#08x, ToFloat32 %#08x", h, math.Float32bits(got[i]), math.Float32bits(f))
		}
		want := h
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			want |= 0x200 // quiet
		}
		if back := FromFloat32(f); back != want {
			t.Fatalf("%#04x → %v → %#04x", h, f, back)
		}
	}
	// A few values the format defines.
	for h, want := range map[uint16]float32{0x3c00: 1, 0xc000: -2, 0x7bff: 65504, 0x0001: 1.0 / (1 << 24), 0x0400: 1.0 / (1 << 14), 0x3555: 0.333251953125} {
		if got := ToFloat32(h); got != want {
			t.Errorf("%#04x: %v, want %v", h, got, want)
		}
	}
}

// A float32 rounds to the nearer of the two halves around it, to the one
// with an even significand on a tie, and to ±Inf past the largest half;
// the vector path gives the same bits.
func TestFromFloat32(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 16))
	var fs []float32
	for b := uint64(0); b < 1<<32; b += 9973 { // every exponent, many significands
		fs = append(fs, math.Float32frombits(uint32(b)))
	}
	for range 1 << 16 {
		fs = append(fs, math.Float32frombits(rng.Uint32()))
	}
	// Every finite half, its successor, the midpoint between them (a tie)
	// and the floats on either side of it.
	for h := range uint32(0x7c00) {
		lo, hi := ToFloat32(uint16(h)), ToFloat32(uint16(h+1))
		mid := math.Float32frombits((math.Float32bits(lo) + math.Float32bits(hi)) / 2)
		if h == 0x3ff { // subnormal to normal: the midpoint is not the bits' average
			mid = (lo + hi) / 2
		}
		for _, f := range []float32{lo, hi, (lo + hi) / 2, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1e9)} {
			fs = append(fs, f, -f)
		}
	}
	fs = append(fs, 65504, 65519.99, 65520, 1e9, float32(math.Inf(1)), float32(math.NaN()), math.Float32frombits(0x7f800001), math.SmallestNonzeroFloat32)
	got := make([]uint16, len(fs))
	FromFloat32s(got, fs)
	for i, f := range fs {
		h := FromFloat32(f)
		if got[i] != h {
			t.Fatalf("%v (%#08x): FromFloat32s %#04x, FromFloat32 %#04x", f, math.Float32bits(f), got[i], h)
		}
		if f != f {
			if h&0x7e00 != 0x7e00 {
				t.Fatalf("NaN %#08x → %#04x, not a quiet NaN", math.Float32bits(f), h)
			}
			continue
		}
		a := float64(f)
		if math.Abs(a) >= 65520 {
			if want := uint16(math.Float32bits(f)>>16)&0x8000 | 0x7c00; h != want {
				t.Fatalf("%v → %#04x, want ±Inf %#04x", f, h, want)
			}
			continue
		}
		// h is nearest: no neighbour of it is nearer, and on a tie h is even.
		v := float64(ToFloat32(h))
		for _, n := range []uint16{h - 1, h + 1} {
			if n&0x7fff >= 0x7c00 {
				continue
			}
			w := float64(ToFloat32(n))
			if d, dn := math.Abs(v-a), math.Abs(w-a); dn < d || (dn == d && h&1 == 1) {
				t.Fatalf("%v → %#04x (%v), but %#04x (%v) is nearer or even", f, h, v, n, w)
			}
		}
	}
}

func BenchmarkConvert(b *testing.B) {
	const n = 2000 * 384 // a pass's pool shard at d = 384
	f := make([]float32, n)
	h := make([]uint16, n)
	for i := range f {
		f[i] = float32(i%1000) / 333
	}
	b.Run("from_float32", func(b *testing.B) {
		b.SetBytes(4 * n)
		for b.Loop() {
			FromFloat32s(h, f)
		}
	})
	b.Run("to_float32", func(b *testing.B) {
		b.SetBytes(4 * n)
		for b.Loop() {
			ToFloat32s(f, h)
		}
	})
}

// Overflow finds exactly the values that round to ±Inf.
func TestOverflow(t *testing.T) {
	for _, c := range []struct {
		xs   []float32
		want int
	}{
		{[]float32{0, 1, -65504, 65519.99}, -1},
		{[]float32{0, 65520}, 1},
		{[]float32{-65520, 1}, 0},
		{[]float32{1, float32(math.Inf(1))}, 1},
		{[]float32{float32(math.NaN()), 1}, -1},
	} {
		if got := Overflow(c.xs); got != c.want {
			t.Errorf("Overflow(%v) = %d, want %d", c.xs, got, c.want)
		}
		for i, x := range c.xs {
			inf := FromFloat32(x)&0x7fff == 0x7c00
			if inf != (i == c.want) && (c.want < 0 || i <= c.want) {
				t.Errorf("%v rounds to ±Inf: %v, against Overflow's %d", x, inf, c.want)
			}
		}
	}
}
