//go:build !purego

package half

import "golang.org/x/sys/cpu"

// F16C comes with AVX2 on every x86 CPU since 2013; the VEX forms need AVX.
var haveF16C = cpu.X86.HasF16C && cpu.X86.HasAVX

// fromFloat32sFast converts the leading multiple of eight values and
// returns how many it did.
func fromFloat32sFast(dst []uint16, src []float32) int {
	n := len(src) &^ 7
	if !haveF16C || n == 0 {
		return 0
	}
	fromFloat32sF16C(&dst[0], &src[0], n)
	return n
}

func toFloat32sFast(dst []float32, src []uint16) int {
	n := len(src) &^ 7
	if !haveF16C || n == 0 {
		return 0
	}
	toFloat32sF16C(&dst[0], &src[0], n)
	return n
}

//go:noescape
func fromFloat32sF16C(dst *uint16, src *float32, n int)

//go:noescape
func toFloat32sF16C(dst *float32, src *uint16, n int)
