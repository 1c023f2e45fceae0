//go:build !amd64 || purego

package preprocess

// jpegIDCTStore inverse-transforms a block and stores it into dst's 8×8
// pixels.
func jpegIDCTStore(dst []byte, stride int, blk *[64]int32) {
	jpegIDCT(blk)
	jpegStore(dst, stride, blk)
}
