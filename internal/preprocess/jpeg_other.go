//go:build !amd64 || purego

package preprocess

// jpegIDCTStore inverse-transforms a block and stores it into dst's 8×8
// pixels.
func jpegIDCTStore(dst []byte, stride int, blk *[64]int32) {
	jpegIDCT(blk)
	jpegStore(dst, stride, blk)
}

// acRunFast is acRun.
func acRunFast(blk *[64]int32, qz *[64]uint64, fast *jpegACLUT, data []byte, limit, k int, acc uint64, n uint, pos int) (int, uint64, uint, int) {
	return acRun(blk, qz, fast, data, limit, k, acc, n, pos)
}
