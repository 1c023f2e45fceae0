package preprocess

import (
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"math/bits"
	"sync"

	"dcd/internal/adler32"
	"dcd/internal/inflate"
)

// The fast path below exists because image/png allocates a new inflater
// (a 32 KiB window plus Huffman tables) for every image, which costs far more
// than decoding a small model input such as a 28x28 digit. It handles only
// the layouts that common encoders write, and reports anything else as not
// handled so that image/png decides, keeping results and error messages for
// unusual or broken files exactly as they were.
//
// Whenever decodePNG returns an image, image/png would return an identical one
// for the same bytes; the checks below are therefore at least as strict as
// image/png's and often stricter.

const pngSignature = "\x89PNG\r\n\x1a\n"

// PNG colour types, as per the PNG specification.
const (
	ctGray      = 0
	ctRGB       = 2
	ctPaletted  = 3
	ctGrayAlpha = 4
	ctRGBA      = 6
)

// maxPooledRow bounds the row buffers kept for reuse, so that one very wide
// image does not pin megabytes in the pool.
const maxPooledRow = 1 << 16

// pngFile is what the chunk scan learns about a file the fast path supports.
type pngFile struct {
	width, height int
	colorType     byte
	plte, trns    []byte // chunk data, paletted images only
	idat          []byte // the whole run of consecutive IDAT chunks, headers and CRCs included
}

// Chunk-order stages. Like image/png, PLTE precedes tRNS, which precedes IDAT.
const (
	stageIHDR = iota
	stagePLTE
	stageTRNS
	stageIDAT
)

// decodePNG decodes data if it is a PNG the fast path supports. ok is false
// when it is not, or when anything about it looks wrong; the caller should
// then use image/png.
func decodePNG(data []byte) (img image.Image, ok bool) {
	f, ok := scanPNG(data)
	if !ok {
		return nil, false
	}
	d := pngDecoders.Get().(*pngDecoder)
	defer d.release()
	return d.decode(&f, false)
}

// withPNG calls use with data decoded, if it is a PNG the fast path
// supports, into pixels that are reused once use returns; ok is false when
// the fast path declined (use was not called).
func withPNG(data []byte, use func(image.Image) error) (ok bool, err error) {
	f, ok := scanPNG(data)
	if !ok {
		return false, nil
	}
	d := pngDecoders.Get().(*pngDecoder)
	defer d.release()
	img, ok := d.decode(&f, true)
	if !ok {
		return false, nil
	}
	return true, use(img)
}

// scanPNG checks the chunk structure and every CRC of data, and returns its
// header fields, palette and IDAT run.
func scanPNG(data []byte) (f pngFile, ok bool) {
	if len(data) < len(pngSignature) || string(data[:len(pngSignature)]) != pngSignature {
		return f, false
	}
	typ, body, rest, ok := nextChunk(data[len(pngSignature):])
	if !ok || string(typ) != "IHDR" || !f.parseIHDR(body) {
		return f, false
	}
	stage := stageIHDR
	for {
		start := rest
		if typ, body, rest, ok = nextChunk(rest); !ok {
			return f, false
		}
		switch string(typ) {
		case "PLTE":
			if f.colorType != ctPaletted || stage != stageIHDR || len(body)%3 != 0 || len(body) == 0 || len(body) > 3*256 {
				return f, false
			}
			f.plte, stage = body, stagePLTE
		case "tRNS":
			// On gray and RGB images tRNS changes the returned image type;
			// image/png handles that rarity.
			if f.colorType != ctPaletted || stage != stagePLTE || len(body) > 256 {
				return f, false
			}
			f.trns, stage = body, stageTRNS
		case "IDAT":
			if stage == stageIDAT || (f.colorType == ctPaletted && stage == stageIHDR) {
				return f, false
			}
			if rest, ok = skipIDATs(rest); !ok {
				return f, false
			}
			f.idat, stage = start[:len(start)-len(rest)], stageIDAT
		case "IEND":
			return f, stage == stageIDAT && len(body) == 0 && len(rest) == 0
		default:
			// image/png skips every other chunk. Skipping only ancillary
			// ones (lower-case first letter) leaves critical chunks it may
			// one day understand to image/png.
			if typ[0]&0x20 == 0 {
				return f, false
			}
		}
	}
}

// nextChunk splits the first chunk off b after checking its length and CRC.
func nextChunk(b []byte) (typ, body, rest []byte, ok bool) {
	if len(b) < 12 {
		return nil, nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	// PNG caps chunk lengths at 2^31-1; image/png rejects larger ones.
	if n > 0x7fffffff || uint64(n) > uint64(len(b)-12) {
		return nil, nil, nil, false
	}
	end := 8 + int(n)
	if crc32.ChecksumIEEE(b[4:end]) != binary.BigEndian.Uint32(b[end:]) {
		return nil, nil, nil, false
	}
	return b[4:8], b[8:end], b[end+4:], true
}

// skipIDATs returns b after any IDAT chunks at its start.
func skipIDATs(b []byte) ([]byte, bool) {
	for len(b) >= 8 && string(b[4:8]) == "IDAT" {
		var ok bool
		if _, _, b, ok = nextChunk(b); !ok {
			return nil, false
		}
	}
	return b, true
}

// parseIHDR accepts non-interlaced 8-bit images within maxDecodePixels and
// maxDecodeSide.
func (f *pngFile) parseIHDR(b []byte) bool {
	if len(b) != 13 {
		return false
	}
	w := int32(binary.BigEndian.Uint32(b[0:4]))
	h := int32(binary.BigEndian.Uint32(b[4:8]))
	depth, ct, compression, filter, interlace := b[8], b[9], b[10], b[11], b[12]
	if w <= 0 || h <= 0 || int64(w)*int64(h) > maxDecodePixels || w > maxDecodeSide || h > maxDecodeSide {
		return false // (decodeStd says why)
	}
	if depth != 8 || compression != 0 || filter != 0 || interlace != 0 || bytesPerPixel(ct) == 0 {
		return false
	}
	f.width, f.height, f.colorType = int(w), int(h), ct
	return true
}

// bytesPerPixel is the size of one 8-bit pixel of colour type ct in the
// decompressed stream, or 0 for unknown types.
func bytesPerPixel(ct byte) int {
	switch ct {
	case ctGray, ctPaletted:
		return 1
	case ctGrayAlpha:
		return 2
	case ctRGB:
		return 3
	case ctRGBA:
		return 4
	}
	return 0
}

// opaqueBlack fills unused palette entries. Sharing one boxed value between
// palettes is safe because interface values cannot be modified in place.
var opaqueBlack color.Color = color.RGBA{A: 0xff}

// palette builds the palette exactly as image/png does: 256 entries of
// capacity, so that pixels beyond the PLTE entries can extend it with opaque
// black, and tRNS turning entries into NRGBA.
func (f *pngFile) palette() color.Palette {
	p := make(color.Palette, 256)
	n := len(f.plte) / 3
	for i := range p {
		if i < n {
			p[i] = color.RGBA{f.plte[3*i], f.plte[3*i+1], f.plte[3*i+2], 0xff}
		} else {
			p[i] = opaqueBlack
		}
	}
	p = p[:max(n, len(f.trns))]
	for i, a := range f.trns {
		c := p[i].(color.RGBA)
		p[i] = color.NRGBA{c.R, c.G, c.B, a}
	}
	return p
}

// newImage makes the image type image/png returns for f's colour type,
// with its pixels in *buf when buf is not nil (grown as needed), else in
// new memory, and returns its pixels and stride as well. putRow writes
// every byte of the pixels, so a reused buffer needs no clearing.
func (f *pngFile) newImage(buf *[]byte) (image.Image, []byte, int) {
	r := image.Rect(0, 0, f.width, f.height)
	stride := f.width
	if f.colorType != ctGray && f.colorType != ctPaletted {
		stride *= 4 // RGBA or NRGBA
	}
	var pix []byte
	if buf != nil {
		*buf = grow(*buf, stride*f.height)
		pix = *buf
	} else {
		pix = make([]byte, stride*f.height)
	}
	switch f.colorType {
	case ctGray:
		return &image.Gray{Pix: pix, Stride: stride, Rect: r}, pix, stride
	case ctRGB:
		return &image.RGBA{Pix: pix, Stride: stride, Rect: r}, pix, stride
	case ctPaletted:
		return &image.Paletted{Pix: pix, Stride: stride, Rect: r, Palette: f.palette()}, pix, stride
	default: // ctGrayAlpha, ctRGBA
		return &image.NRGBA{Pix: pix, Stride: stride, Rect: r}, pix, stride
	}
}

// pngDecoder holds what is worth reusing between images: an inflater,
// whose tables compress/flate would allocate anew per image, and the
// buffers the IDAT data and the filtered rows go through.
type pngDecoder struct {
	inflate inflate.Decoder
	z       []byte // the IDAT data, when it spans several chunks
	raw     []byte // the filtered rows
	zero    []byte // the row above the first
	pix     []byte // the image's pixels, when it is used and released at once
}

var pngDecoders = sync.Pool{New: func() any { return new(pngDecoder) }}

// release returns d to the pool, dropping buffers too large to keep so
// that one very large image does not pin megabytes in the pool.
func (d *pngDecoder) release() {
	if cap(d.raw) > maxPooledRaw {
		d.raw = nil
	}
	if cap(d.z) > maxPooledRaw {
		d.z = nil
	}
	if cap(d.zero) > maxPooledRow {
		d.zero = nil
	}
	if cap(d.pix) > maxPooledRaw {
		d.pix = nil
	}
	pngDecoders.Put(d)
}

// decode decodes f into a new image, or, with reuse, into d's buffers
// (d.pix, or for RGB the unfiltered rows in d.raw themselves): such an
// image is only good until d is released.
func (d *pngDecoder) decode(f *pngFile, reuse bool) (image.Image, bool) {
	z, ok := d.idatData(f.idat)
	if !ok || len(z) < 2 || !zlibHeader(z[0], z[1]) {
		return nil, false
	}
	bpp := bytesPerPixel(f.colorType)
	rowLen := 1 + f.width*bpp
	// Deflate expands at most 1032:1 (a 258-byte match in two bits), so
	// less IDAT data cannot hold the image. Declining before allocating it
	// spares such files an allocation here on top of image/png's.
	if uint64(len(z))*1032 < uint64(f.height)*uint64(rowLen) {
		return nil, false
	}
	d.raw = grow(d.raw, f.height*rowLen)
	raw := d.raw
	n, read, err := d.inflate.Decode(raw, z[2:])
	if err != nil || n != len(raw) {
		return nil, false
	}
	// The zlib trailer, its Adler-32 checksum, must end the IDAT data:
	// image/png reports extra data as an error (or, if it ends in a
	// trailing IDAT chunk, ignores it), so such files are left to it.
	trailer := z[2+read:]
	if len(trailer) != 4 || binary.BigEndian.Uint32(trailer) != adler32.Checksum(raw) {
		return nil, false
	}
	var img image.Image
	var pix []byte
	stride := 0
	if reuse && f.colorType == ctRGB {
		// The unfiltered rows are the pixels: no expansion to RGBA.
		img = &rgb{Pix: raw[1:], Stride: rowLen, Rect: image.Rect(0, 0, f.width, f.height)}
	} else {
		var buf *[]byte
		if reuse {
			buf = &d.pix
		}
		img, pix, stride = f.newImage(buf)
	}
	d.zero = grow(d.zero, rowLen)
	prev := d.zero
	clear(prev)
	pairs := bpp == 3 || bpp == 4 // paethRows' pixel sizes; a digit's rows go straight to unfilter
	for y := 0; y < f.height; {
		n := 1
		if pairs {
			n = unfilterAt(raw, y, rowLen, prev, bpp)
		} else if !unfilter(raw[y*rowLen:(y+1)*rowLen], prev, bpp) {
			n = 0
		}
		if n == 0 {
			return nil, false
		}
		for i := y; i < y+n && pix != nil; i++ {
			putRow(f.colorType, pix[i*stride:(i+1)*stride], raw[i*rowLen+1:(i+1)*rowLen])
		}
		y += n
		prev = raw[(y-1)*rowLen : y*rowLen]
	}
	if p, ok := img.(*image.Paletted); ok {
		extendPalette(p)
	}
	return img, true
}

// rgb is opaque 8-bit RGB, three bytes a pixel: a PNG's unfiltered rows,
// each after its filter byte, which readRow reads as they are.
type rgb struct {
	Pix    []byte // pixel (x, y) at Pix[(y-Rect.Min.Y)*Stride+3*(x-Rect.Min.X):]
	Stride int
	Rect   image.Rectangle
}

func (m *rgb) ColorModel() color.Model { return color.RGBAModel }
func (m *rgb) Bounds() image.Rectangle { return m.Rect }
func (m *rgb) At(x, y int) color.Color {
	if !(image.Point{x, y}.In(m.Rect)) {
		return color.RGBA{}
	}
	p := m.Pix[m.PixOffset(x, y):]
	return color.RGBA{p[0], p[1], p[2], 0xff}
}

// PixOffset is the index of pixel (x, y)'s first byte in Pix.
func (m *rgb) PixOffset(x, y int) int {
	return (y-m.Rect.Min.Y)*m.Stride + 3*(x-m.Rect.Min.X)
}

// maxPooledRaw bounds the IDAT and row buffers kept for reuse.
const maxPooledRaw = 1 << 20

// idatData returns the data of a run of IDAT chunks, already checked by
// scanPNG: the one chunk's own bytes, or the chunks' data joined in d.z.
// ok is false when the last chunk is empty: the zlib trailer must end the
// last chunk, as image/png's reader sees it, or image/png decides.
func (d *pngDecoder) idatData(run []byte) (z []byte, ok bool) {
	first := run[8 : 8+binary.BigEndian.Uint32(run)]
	if 12+len(first) == len(run) {
		return first, len(first) > 0
	}
	z = d.z[:0]
	last := 0
	for len(run) > 0 {
		last = int(binary.BigEndian.Uint32(run))
		z = append(z, run[8:8+last]...)
		run = run[12+last:]
	}
	d.z = z
	return z, last > 0
}

// zlibHeader checks the two-byte zlib header as compress/zlib does. A
// preset dictionary is refused because PNG has none to offer.
func zlibHeader(cmf, flg byte) bool {
	return cmf&0x0f == 8 && cmf>>4 <= 7 && (uint(cmf)<<8|uint(flg))%31 == 0 && flg&0x20 == 0
}

// unfilterAt reverses the filter of raw's row y, rowLen bytes (the
// filter type first) below prev, in place, and returns how many rows it
// unfiltered: two when it and the next are Paeth rows (paethRows: a Paeth
// pixel waits on the one to its left, and the row below can follow a pixel
// behind, so the vector unit has two chains to interleave instead of one),
// else one, or none for an unknown filter type.
func unfilterAt(raw []byte, y, rowLen int, prev []byte, bpp int) int {
	cur := raw[y*rowLen : (y+1)*rowLen]
	if cur[0] == 4 && (y+2)*rowLen <= len(raw) {
		if next := raw[(y+1)*rowLen : (y+2)*rowLen]; next[0] == 4 && paethRows(cur[1:], next[1:], prev[1:], bpp) {
			return 2
		}
	}
	if !unfilter(cur, prev, bpp) {
		return 0
	}
	return 1
}

// unfilter reverses the filter named by cur[0] on the rest of cur, in place.
// prev is the previous row, already unfiltered; bpp is the filter's pixel
// step. It reports false for unknown filter types.
//
// The filters that look left run one channel at a time so that the left
// neighbour stays in a register: reading back the byte just stored costs a
// store-to-load forwarding delay per byte, which dominated small gray images.
func unfilter(cur, prev []byte, bpp int) bool {
	c, p := cur[1:], prev[1:len(cur)]
	switch cur[0] {
	case 0: // None
	case 1: // Sub
		for ch := range bpp {
			var left byte
			for i := ch; i < len(c); i += bpp {
				left += c[i]
				c[i] = left
			}
		}
	case 2: // Up
		for i, b := range p {
			c[i] += b
		}
	case 3: // Average
		for ch := range bpp {
			var left byte
			for i := ch; i < len(c) && i < len(p); i += bpp {
				left = c[i] + uint8((uint(left)+uint(p[i]))/2)
				c[i] = left
			}
		}
	case 4: // Paeth
		unfilterPaeth(c, p, bpp)
	default:
		return false
	}
	return true
}

// unfilterPaeth reverses the Paeth filter. The predictor is chosen without
// branches because on real images the choice is unpredictable. The
// comparisons are the PNG specification's PaethPredictor with p = a+b-c
// substituted.
func unfilterPaeth(c, p []byte, bpp int) {
	unfilterPaethFrom(c, p, bpp, paethPixels(c, p, bpp)) // the vector unit's share, whole pixels
}

// unfilterPaethFrom is unfilterPaeth for the bytes from a pixel's start
// on, those before it unfiltered.
func unfilterPaethFrom(c, p []byte, bpp, from int) {
	for ch := range bpp {
		var a, ul int // left and upper-left, zero before the first pixel
		i := from + ch
		if from >= bpp {
			a, ul = int(c[i-bpp]), int(p[i-bpp])
		}
		for ; i < len(c) && i < len(p); i += bpp {
			b := int(p[i])
			pa := abs(b - ul)       // |p-a|
			pb := abs(a - ul)       // |p-b|
			pc := abs(a + b - 2*ul) // |p-c|
			pred := ul
			if pb <= pc {
				pred = b
			}
			if pa <= min(pb, pc) {
				pred = a
			}
			a = (pred + int(c[i])) & 0xff
			c[i] = uint8(a)
			ul = b
		}
	}
}

// abs is branch-free because the sign of filter differences is
// unpredictable on real images.
func abs(x int) int {
	m := x >> (bits.UintSize - 1)
	return (x ^ m) - m
}

// putRow converts one unfiltered row of colour type ct to the pixel layout
// of the image newImage returns for it.
func putRow(ct byte, dst, src []byte) {
	switch ct {
	case ctGray, ctPaletted, ctRGBA:
		copy(dst, src)
	case ctGrayAlpha:
		for i, j := 0, 0; j+1 < len(src); i, j = i+4, j+2 {
			y := src[j]
			dst[i], dst[i+1], dst[i+2], dst[i+3] = y, y, y, src[j+1]
		}
	case ctRGB:
		for i, j := 0, 0; j+2 < len(src); i, j = i+4, j+3 {
			dst[i], dst[i+1], dst[i+2], dst[i+3] = src[j], src[j+1], src[j+2], 0xff
		}
	}
}

// extendPalette grows p's palette to cover every index used, as image/png
// does, so that At never indexes out of range.
func extendPalette(p *image.Paletted) {
	if len(p.Palette) == 256 {
		return
	}
	top := 0
	for _, i := range p.Pix {
		top = max(top, int(i))
	}
	if top >= len(p.Palette) {
		p.Palette = p.Palette[:top+1]
	}
}
