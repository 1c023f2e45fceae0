//go:build !purego

package preprocess

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// jpegIDCTStore inverse-transforms a block and stores it into dst's 8×8
// pixels, as jpegIDCT then jpegStore do; with AVX2 in one pass over eight
// lanes, four times as fast.
func jpegIDCTStore(dst []byte, stride int, blk *[64]int32) {
	if haveAVX2 {
		_ = dst[7*stride+7]
		jpegIDCTStoreAVX2(blk, &dst[0], stride, &jpegIDCTK)
		return
	}
	jpegIDCT(blk)
	jpegStore(dst, stride, blk)
}

// jpegIDCTK are jpegIDCTStoreAVX2's constants, each in eight lanes: the
// rotations' kcos, ksin−kcos and kcos+ksin (jpegBox's products) and the
// scalings, in the order idctRows and idctCols use them; the rounding
// half and the level shift; and the permutation that orders the packed
// rows.
var jpegIDCTK = func() (k [17][8]int32) {
	box := func(kcos, ksin int32) []int32 { return []int32{kcos, ksin - kcos, kcos + ksin} }
	var v []int32
	v = append(v, box(jpegFix(sqrt2inv_cos6, 18), -jpegFix(sqrt2inv_sin6, 18))...)
	v = append(v, jpegFix(sqrt2inv, 8))
	v = append(v, box(jpegFix(cos3, 12), -jpegFix(sin3, 12))...)
	v = append(v, box(jpegFix(cos1, 12), -jpegFix(sin1, 12))...)
	v = append(v, box(jpegFix(sqrt2inv_cos6, 12), -jpegFix(sqrt2inv_sin6, 12))...)
	v = append(v, jpegFix(sqrt2inv, 14), 1<<19, 128)
	for i, x := range v {
		for j := range k[i] {
			k[i][j] = x
		}
	}
	k[16] = [8]int32{0, 4, 1, 5, 2, 6, 3, 7}
	return k
}()

//go:noescape
func jpegIDCTStoreAVX2(blk *[64]int32, dst *byte, stride int, k *[17][8]int32)

// acRunFast is acRun, in assembly where the CPU has BMI2.
func acRunFast(blk *[64]int32, qz *[64]uint64, fast *jpegACLUT, data []byte, limit, k int, acc uint64, n uint, pos int) (int, uint64, uint, int) {
	if haveBMI2 {
		// acRunBMI2 reads data only below limit+8, which must be in it.
		limit = min(limit, len(data)-8)
		return acRunBMI2(blk, qz, fast, unsafe.SliceData(data), limit, k, acc, n, pos)
	}
	return acRun(blk, qz, fast, data, limit, k, acc, n, pos)
}

var haveBMI2 = cpu.X86.HasBMI2

//go:noescape
func acRunBMI2(blk *[64]int32, qz *[64]uint64, fast *jpegACLUT, data *byte, limit, k int, acc uint64, n uint, pos int) (kk int, acc2 uint64, n2 uint, pos2 int)
