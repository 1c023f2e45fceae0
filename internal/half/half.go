// Package half converts between float32 and IEEE 754 half precision
// (binary16), the float16 that feature files may be stored in.
//
// Conversions round to nearest, ties to even, keep subnormals, and turn a
// signalling NaN quiet, as the F16C instructions do; on amd64 with F16C
// they run eight values a step, and the Go code gives the same bits
// everywhere else. (Arrow's float16.New truncates and flushes subnormals
// to zero, so the same features would store differently by machine.)
package half

import "math"

// FromFloat32s sets dst[i] to src[i] rounded to half precision; len(dst)
// must be at least len(src).
func FromFloat32s(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	n := fromFloat32sFast(dst, src)
	for i := n; i < len(src); i++ {
		dst[i] = FromFloat32(src[i])
	}
}

// ToFloat32s sets dst[i] to the float32 value of src[i], which is exact;
// len(dst) must be at least len(src).
func ToFloat32s(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	n := toFloat32sFast(dst, src)
	for i := n; i < len(src); i++ {
		dst[i] = ToFloat32(src[i])
	}
}

// Overflow returns the index of the first value of xs too large in
// magnitude for half precision, which FromFloat32 rounds to ±Inf (65520
// or more, where the largest half is 65504, and ±Inf), or -1 if none is.
// A NaN is not one: it stays NaN.
func Overflow(xs []float32) int {
	for i, x := range xs {
		if b := math.Float32bits(x) &^ (1 << 31); b >= 0x477ff000 && b <= 0x7f800000 {
			return i
		}
	}
	return -1
}

// FromFloat32 rounds f to half precision.
func FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	b &^= 1 << 31
	switch {
	case b > 0x7f800000: // NaN: quiet, with the payload's top bits
		return sign | 0x7e00 | uint16(b>>13)&0x3ff
	case b >= 0x477ff000: // at least halfway from 65504 to 65536: ±Inf
		return sign | 0x7c00
	case b >= 0x38800000: // a normal half: rebias the exponent, round
		b = b - 0x38000000 + 0xfff + (b>>13)&1
		return sign | uint16(b>>13)
	case b < 0x33000000: // at most 2^-25, half the least subnormal: 0
		return sign
	}
	// A subnormal half, m × 2^-24: the float's 24-bit significand shifted
	// right by 126 − e, rounded to nearest even. Rounding up from 1023
	// carries into the least normal's encoding, which is right.
	e := b >> 23
	m := b&0x7fffff | 0x800000
	shift := 126 - e
	q, r, halfway := m>>shift, m&(1<<shift-1), uint32(1)<<(shift-1)
	if r > halfway || r == halfway && q&1 == 1 {
		q++
	}
	return sign | uint16(q)
}

// ToFloat32 returns h's value as a float32, which holds every half
// exactly.
func ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	e := uint32(h>>10) & 0x1f
	m := uint32(h & 0x3ff)
	switch {
	case e == 0x1f && m != 0: // NaN, made quiet
		return math.Float32frombits(sign | 0x7fc00000 | m<<13)
	case e == 0x1f:
		return math.Float32frombits(sign | 0x7f800000)
	case e != 0:
		return math.Float32frombits(sign | (e+112)<<23 | m<<13)
	}
	v := float32(m) / (1 << 24) // a subnormal, m × 2^-24, or zero
	if sign != 0 {
		v = -v
	}
	return v
}
