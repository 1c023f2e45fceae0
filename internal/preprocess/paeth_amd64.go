//go:build !purego

package preprocess

// paethPixels unfilters Paeth bytes of RGB and RGBA rows a pixel at a
// time in vector lanes, and returns how many; unfilterPaeth does the rest.
// In Go a channel is a chain of dependent steps, compiled with branches
// and spills: 60 % of a 256×256 RGB decode.
func paethPixels(c, p []byte, bpp int) int {
	if (bpp != 3 && bpp != 4) || len(c) < 4 || len(p) < len(c) {
		return 0
	}
	return paethSSE2(&c[0], &p[0], len(c), bpp)
}

//go:noescape
func paethSSE2(c, p *byte, n, bpp int) int

// paethRows reverses the Paeth filter on two rows at once, c0 (p above
// it) and c1 below it, and reports whether it did: for RGB and RGBA rows
// of at least 2·bpp+4 bytes (4 RGB pixels, 3 RGBA), with AVX. The vector unit runs
// the two rows' pixel chains side by side, c1 a pixel behind c0 since its
// pixel above is c0's.
func paethRows(c0, c1, p []byte, bpp int) bool {
	n := len(c0)
	if !haveAVX || (bpp != 3 && bpp != 4) || n < 2*bpp+4 || len(c1) != n || len(p) < n {
		return false
	}
	for i := range bpp { // c0's first pixel: its predictor is the one above
		c0[i] += p[i]
	}
	x := paethRowsAVX(&c0[0], &c1[0], &p[0], n, bpp)
	unfilterPaethFrom(c0, p, bpp, x)
	unfilterPaethFrom(c1, c0, bpp, x-bpp)
	return true
}

//go:noescape
func paethRowsAVX(c0, c1, p *byte, n, bpp int) int
