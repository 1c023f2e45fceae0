package preprocess

import (
	"bytes"
	"encoding/binary"
	"image"
	"slices"
	"sync"
)

// The JPEG fast path exists because image/jpeg reads the entropy-coded
// data a byte at a time through a 32-bit accumulator and a function call
// per bit refill, and allocates the whole image anew for every file: on a
// 500×375 photo, 3 ms of a 3.6 ms decode-and-resize, several times the
// CPU a GPU spends on inferring it. It decodes what cameras and encoders
// write — baseline or extended sequential Huffman JPEGs in one scan, and
// progressive ones (jpeg_progressive.go), gray or YCbCr — with a 64-bit
// accumulator refilled eight bytes at a time, into planes reused from
// image to image. Anything else (a sequential image in several scans,
// CMYK, RGB, restart markers in a progressive scan, damaged data it
// would have to resynchronise) declines, and image/jpeg decides, keeping
// results and errors for such files exactly as they were.
//
// Whenever the fast path returns an image, image/jpeg returns one with the
// same pixels for the same bytes: the same inverse DCT, in the same int32
// arithmetic (jpegIDCT), the same clamping and the same plane layout; its
// checks are at least as strict as image/jpeg's.

// JPEG markers, as in image/jpeg.
const (
	jpegSOF0  = 0xc0 // baseline sequential
	jpegSOF1  = 0xc1 // extended sequential
	jpegSOF2  = 0xc2 // progressive
	jpegDHT   = 0xc4
	jpegRST0  = 0xd0
	jpegSOI   = 0xd8
	jpegEOI   = 0xd9
	jpegSOS   = 0xda
	jpegDQT   = 0xdb
	jpegDRI   = 0xdd
	jpegCOM   = 0xfe
	jpegAPP0  = 0xe0
	jpegAPP14 = 0xee
	jpegAPP15 = 0xef
)

// jpegZig maps zig-zag order to the natural order of a block.
var jpegZig = [64]uint8{
	0, 1, 8, 16, 9, 2, 3, 10,
	17, 24, 32, 25, 18, 11, 4, 5,
	12, 19, 26, 33, 40, 48, 41, 34,
	27, 20, 13, 6, 7, 14, 21, 28,
	35, 42, 49, 56, 57, 50, 43, 36,
	29, 22, 15, 23, 30, 37, 44, 51,
	58, 59, 52, 45, 38, 31, 39, 46,
	53, 60, 61, 54, 47, 55, 62, 63,
}

// jpegLUTBits is how many bits the Huffman look-up table decodes at once:
// nearly every code of a photo's tables is at most 9 bits long.
const jpegLUTBits = 9

// jpegACBits is how many bits an AC table's coefficient look-up decodes
// at once, code and magnitude together. In a 500×375 photo at quality 75
// to 95, 96–98 % of the AC symbols fit, and most of the rest are ends of
// blocks; with pairs (below), 10 and 12 bits measured slower.
const jpegACBits = 11

// jpegACLUT is an AC table's coefficient look-up: the next jpegACBits bits
// to a whole coefficient when its code and magnitude bits fit in them, or
// once paired to two when both do (acEntry); 0 for anything else (an end
// of block or band, sixteen zeros, a longer code or magnitude, no code).
// A coefficient costs one look-up and one shift instead of two of each and
// the sign's extension, and a pair the same for both, in the loop that is
// most of a photo's decode: each look-up waits on the shift before it.
type jpegACLUT [1 << jpegACBits]uint64

// acEntry is a look-up's entry: the bits taken in all, how far the
// zig-zag index moves to the last coefficient (the first's zero run, and
// for a pair one more and the second's), the first's run and bits, and the
// first and second coefficients (the second 0 for an entry of one).
func acEntry(bits, advance, run, firstBits int, first, second int32) uint64 {
	return uint64(bits) | uint64(advance)<<8 | uint64(run)<<16 | uint64(firstBits)<<24 |
		uint64(uint16(first))<<32 | uint64(uint16(second))<<48
}

// jpegHuffman is one Huffman table, canonical as in section C of T.81.
type jpegHuffman struct {
	// lut maps the next jpegLUTBits bits to the value<<8 | code length,
	// or 0 when the code is longer.
	lut [1 << jpegLUTBits]uint16
	// ac is an AC table's coefficient look-up, made when a sequential
	// scan first uses the table (progressive scans never read it); nil
	// until then. Its entries are of one coefficient until a scan large
	// enough to repay the pairing (jpegPairBlocks) pairs them; kept with
	// the table, a pairing serves every image with the same table after.
	ac     *jpegACLUT
	paired bool
	counts [16]uint8 // codes of each length, for the look-up
	// For longer codes, per length l: the largest code of that length
	// (−1: none), and the offset from a code to its value's index.
	maxCode [17]int32
	offset  [17]int32
	vals    [256]uint8
}

// build makes h from a DHT segment's code counts and values. ok is false
// for a table image/jpeg would refuse or decode otherwise than by the
// canonical code (one whose counts overflow a length).
func (h *jpegHuffman) build(counts []byte, vals []byte) bool {
	h.ac, h.paired = nil, false
	clear(h.lut[:])
	copy(h.counts[:], counts)
	copy(h.vals[:], vals)
	code, k := int32(0), int32(0)
	for l := 1; l <= 16; l++ {
		n := int32(counts[l-1])
		h.maxCode[l] = -1
		if n > 0 {
			if code+n > 1<<l {
				return false
			}
			h.offset[l] = k - code
			h.maxCode[l] = code + n - 1
			if l <= jpegLUTBits {
				for c := code; c < code+n; c++ {
					e := uint16(vals[k+c-code])<<8 | uint16(l)
					shift := jpegLUTBits - l
					for i := c << shift; i < (c+1)<<shift; i++ {
						h.lut[i] = e
					}
				}
			}
			k += n
		}
		code = (code + n) << 1
	}
	return true
}

// lookup makes h's coefficient look-up in t, unless h has it, and pairs
// it if pair and it is not yet: h is an AC table a sequential scan uses.
func (h *jpegHuffman) lookup(t *jpegACLUT, pair bool) {
	if h.ac == nil {
		clear(t[:])
		code, k := int32(0), 0
		for l := 1; l <= 16; l++ {
			n := int32(h.counts[l-1])
			for c := code; c < code+n; c++ {
				t.add(c, l, h.vals[k])
				k++
			}
			code = (code + n) << 1
		}
		h.ac = t
	}
	if pair && !h.paired {
		h.ac.pair()
		h.paired = true
	}
}

// jpegTables are a decoder's Huffman tables, kept from image to image
// with the DHT bytes each was built from. Most encoders write the same
// tables into every file (the standard ones) unless told to optimise
// them per image, as mozjpeg does by default; then a table is built, and
// its look-up made and paired, once rather than for every image, which
// was most of a 32×32 photo's decode.
type jpegTables struct {
	huff [2][4]jpegHuffman // [DC, AC][destination]
	ac   [4]jpegACLUT
	dht  [2][4][]byte // the counts and values each was built from; nil: none
}

// define makes table th of class tc (0 DC, 1 AC) the one spec (a DHT
// segment's counts and values) gives, building it unless it already is.
func (t *jpegTables) define(tc, th uint8, spec []byte) bool {
	if old := t.dht[tc][th]; old != nil && bytes.Equal(old, spec) {
		return true
	}
	buf := t.dht[tc][th][:0]
	t.dht[tc][th] = nil // until built
	if !t.huff[tc][th].build(spec[:16], spec[16:]) {
		return false
	}
	t.dht[tc][th] = append(buf, spec...)
	return true
}

// add fills the entries for code c, l bits long, of run/size rs, when
// code and magnitude fit in jpegACBits.
func (t *jpegACLUT) add(c int32, l int, rs uint8) {
	r, s := int32(rs>>4), int(rs&0x0f)
	if s == 0 || l+s > jpegACBits {
		return
	}
	shift := jpegACBits - l - s
	for m := range int32(1) << s {
		// The magnitude bits as extend reads them (F.2.2.1).
		v := m
		if m < 1<<(s-1) {
			v += 1 - 1<<s
		}
		e := acEntry(l+s, int(r), int(r), l+s, v, 0)
		first := (c<<s | m) << shift
		for i := first; i < first+1<<shift; i++ {
			t[i] = e
		}
	}
}

// jpegPairBlocks is the least blocks a scan has for its AC look-ups to be
// paired. Pairing a table costs what decoding some 200–350 blocks saves:
// with tables new in every image, a 32×32 colour photo (24 blocks) took
// 13.4 µs paired against 8.3, a 128×128 one (384) 40 µs against 44, a
// 500×375 one 0.64 ms against 0.75. A table kept from the image before is
// paired once.
const jpegPairBlocks = 256

// pair makes each entry whose first coefficient leaves the whole of a
// second's code and magnitude in the rest of its bits an entry of both.
func (t *jpegACLUT) pair() {
	for i, e := range t {
		if e == 0 {
			continue
		}
		l1 := int(e >> 24 & 0xff)
		next := t[i<<l1&(1<<jpegACBits-1)]
		l2 := int(next >> 24 & 0xff)
		if next == 0 || l1+l2 > jpegACBits {
			continue
		}
		r1, r2 := int(e>>16&0xff), int(next>>16&0xff)
		t[i] = acEntry(l1+l2, r1+1+r2, r1, l1, int32(int16(e>>32)), int32(int16(next>>32)))
	}
}

// jpegBits reads the entropy-coded data of a scan, most significant bit
// first: acc holds n bits, left-aligned. At a marker it feeds zero bytes
// instead and counts them in fake, so that a block which ran into them
// (data missing) can be told from one that ended before them.
type jpegBits struct {
	data []byte
	pos  int // next byte of data to load
	acc  uint64
	n    uint
	fake uint
	ff   int // where the next 0xff is, at or after pos once block has passed the one before
}

// load puts as many whole bytes of w, the next eight of the data, as fit
// into acc, holding n bits, when none of them is 0xff (stuffing or a
// marker), and returns acc and n then and how many it put, 0 when one is.
func load(w, acc uint64, n uint) (uint64, uint, int) {
	r := (n + 7) &^ 7      // n rounded up to whole bytes
	top := ^uint64(0) << r // the bytes that fit
	// The zero-byte test on ^w may also flag a byte before a true 0xff,
	// never miss one: a false alarm only takes the slow way.
	if x := ^w; (x-0x0101010101010101)&^x&0x8080808080808080&top != 0 {
		return acc, n, 0
	}
	return acc | w&top>>n, n + 64 - r, int(64-r) / 8
}

// refill loads bytes until n > 56.
func (b *jpegBits) refill() {
	if b.fake == 0 && b.pos+8 <= len(b.data) {
		var k int
		if b.acc, b.n, k = load(binary.BigEndian.Uint64(b.data[b.pos:]), b.acc, b.n); k > 0 {
			b.pos += k
			return
		}
	}
	b.refillBytes()
}

// refillBytes is refill a byte at a time, unstuffing, and feeding zeros
// at a marker or the data's end.
func (b *jpegBits) refillBytes() {
	for b.n <= 56 {
		var c byte
		switch {
		case b.fake > 0 || b.pos >= len(b.data):
			b.fake += 8
		case b.data[b.pos] != 0xff:
			c = b.data[b.pos]
			b.pos++
		case b.pos+1 < len(b.data) && b.data[b.pos+1] == 0:
			c = 0xff
			b.pos += 2
		default: // a marker
			b.fake += 8
		}
		b.acc |= uint64(c) << (56 - b.n)
		b.n += 8
	}
}

// decode returns the next Huffman-coded value; ok is false for a code
// not in h.
func (b *jpegBits) decode(h *jpegHuffman) (v uint8, ok bool) {
	if b.n < 32 {
		b.refill()
	}
	if e := h.lut[b.acc>>(64-jpegLUTBits)]; e != 0 {
		l := uint(e & 0xff)
		b.acc <<= l
		b.n -= l
		return uint8(e >> 8), true
	}
	for l := uint(jpegLUTBits + 1); l <= 16; l++ {
		if c := int32(b.acc >> (64 - l)); c <= h.maxCode[l] {
			b.acc <<= l
			b.n -= l
			return h.vals[c+h.offset[l]], true
		}
	}
	return 0, false
}

// receiveExtend reads t bits (t ≤ 16, following a decode, which left at
// least 16) and extends them to the signed value they code (F.2.2.1).
func (b *jpegBits) receiveExtend(t uint8) int32 {
	x := extend(b.acc, uint(t))
	b.acc <<= t
	b.n -= uint(t)
	return x
}

// extend is the signed value the top t bits of acc code (F.2.2.1): read
// as unsigned when the first is 1, minus 2^t − 1 when it is 0. It takes
// no branch, since the sign of a coefficient is a coin toss.
func extend(acc uint64, t uint) int32 {
	x := int32(acc >> (64 - t)) // 0 when t is 0
	negative := int32(^(int64(acc) >> 63))
	return x + negative&(1-1<<t)
}

type jpegComponent struct {
	id   uint8
	h, v int
	tq   uint8
	// In the scan: the DC and AC tables, and the running DC value.
	td, ta uint8
	dc     int32
}

// jpegDecoder is one file's tables and state, and the planes and
// coefficients, which are worth reusing from image to image.
type jpegDecoder struct {
	width, height  int
	nComp          int
	comp           [3]jpegComponent
	quant          [4][64]int32  // zig-zag order
	qz             [4][64]uint64 // quant, each with its natural index (jpegZig) in the top half: acRun's
	quantDefined   [4]bool
	tables         *jpegTables // kept from image to image
	defined        [2][4]bool  // the tables this image defined
	ri             int
	jfif           bool
	adobe          bool // an Adobe APP14, and its transform
	adobeTransform byte
	baseline       bool
	progressive    bool
	scanned        bool
	scans          int
	bits           jpegBits
	mxx, myy       int // MCUs across and down
	img            image.Image
	out            [3][]byte // img's planes, and their strides
	strides        [3]int
	planes         [3][]byte // the pool's planes
	// A progressive image's coefficients, every block's, until its last
	// scan; the pool's buffer they are cut from; and the run of blocks
	// left with no coefficient in the current band. nz is each block's
	// non-zero coefficients, bit z for zig-zag index z (1 to 63), which
	// refinement scans step through instead of every coefficient.
	coef    [3][][64]int32
	coefBuf [][64]int32
	nz      [3][]uint64
	nzBuf   []uint64
	eobRun  uint16
}

var jpegDecoders = sync.Pool{New: func() any { return new(jpegDecoder) }}

// maxPooledCoef bounds the progressive coefficients kept for reuse: a
// 1.4-megapixel 4:2:0 image's (four bytes a sample). Allocated for every
// image, the 2 MB of a 720×480 one cost a fifth of its decode in page
// faults and collections.
const maxPooledCoef = 8 << 20

// release returns d to the pool, dropping planes too large to keep.
func (d *jpegDecoder) release() {
	for i, p := range d.planes {
		if cap(p) > maxPooledRaw {
			d.planes[i] = nil
		}
	}
	if cap(d.coefBuf)*64*4 > maxPooledCoef {
		d.coefBuf, d.nzBuf = nil, nil
	}
	d.bits.data, d.img, d.out, d.coef, d.nz = nil, nil, [3][]byte{}, [3][][64]int32{}, [3][]uint64{}
	jpegDecoders.Put(d)
}

// decodeJPEG decodes data into a new image if it is a JPEG the fast path
// supports; ok is false when it is not.
func decodeJPEG(data []byte) (img image.Image, ok bool) {
	d := jpegDecoders.Get().(*jpegDecoder)
	defer d.release()
	return d.decode(data, false)
}

// withJPEG calls use with data decoded, if it is a JPEG the fast path
// supports, into planes that are reused once use returns; ok is false when
// the fast path declined (use was not called).
func withJPEG(data []byte, use func(image.Image) error) (ok bool, err error) {
	d := jpegDecoders.Get().(*jpegDecoder)
	defer d.release()
	img, ok := d.decode(data, true)
	if !ok {
		return false, nil
	}
	return true, use(img)
}

// decode walks data's segments as image/jpeg does, declining at anything
// outside the fast path, and returns the image; with reuse, it lives in
// d's planes, only good until d is released.
func (d *jpegDecoder) decode(data []byte, reuse bool) (image.Image, bool) {
	*d = jpegDecoder{planes: d.planes, coefBuf: d.coefBuf, nzBuf: d.nzBuf, tables: d.tables}
	if d.tables == nil {
		d.tables = new(jpegTables)
	}
	if len(data) < 4 || data[0] != 0xff || data[1] != jpegSOI {
		return nil, false
	}
	pos := 2
	for {
		if pos == len(data) && d.scanned && !d.progressive {
			// The end-of-image marker alone is missing after a whole
			// sequential scan: libjpeg warns and decodes it (PIL loads
			// it); image/jpeg would fail on the missing bytes.
			break
		}
		if pos+2 > len(data) || data[pos] != 0xff {
			return nil, false
		}
		marker := data[pos+1]
		pos += 2
		if marker == jpegEOI {
			break
		}
		if pos+2 > len(data) {
			return nil, false
		}
		n := int(binary.BigEndian.Uint16(data[pos:])) - 2
		if n < 0 || pos+2+n > len(data) {
			return nil, false
		}
		seg := data[pos+2 : pos+2+n]
		pos += 2 + n
		ok := true
		switch {
		case marker == jpegSOF0 || marker == jpegSOF1 || marker == jpegSOF2:
			d.baseline = marker == jpegSOF0
			d.progressive = marker == jpegSOF2
			// decodeStd's bound, before the planes are allocated: a
			// 150-byte file can claim 64 megapixels. A large image's
			// scans are measured (a pass over the file, which a small
			// one, cheap to allocate for, is spared).
			ok = d.frame(seg)
			if ok && d.blocks() > 1<<16 {
				_, coded := jpegBudget(data)
				ok = !jpegTooSmall(d.blocks(), coded)
			}
		case marker == jpegDHT:
			ok = d.dht(seg)
		case marker == jpegDQT:
			ok = d.quantTables(seg)
		case marker == jpegDRI:
			ok = n == 2
			if ok {
				d.ri = int(binary.BigEndian.Uint16(seg))
			}
		case marker == jpegSOS:
			switch {
			case d.rgb(), d.scanned && !d.progressive, d.scans == maxJPEGScans:
				// RGB, or a sequential image in several scans: image/jpeg's;
				// too many scans: decodeStd's refusal.
				return nil, false
			case d.progressive:
				ok = d.progressiveScan(seg, data, &pos, reuse)
			default:
				ok = d.scan(seg, data, &pos, reuse)
			}
			d.scanned = true
			d.scans++
		case marker == jpegAPP0:
			if n >= 5 {
				d.jfif = string(seg[:5]) == "JFIF\x00"
			}
		case marker == jpegAPP14:
			// Adobe's (Photoshop's) transform flag: 0 for RGB.
			if n >= 12 && string(seg[:5]) == "Adobe" {
				d.adobe, d.adobeTransform = true, seg[11]
			}
		case jpegAPP0 < marker && marker <= jpegAPP15, marker == jpegCOM:
		default: // lossless, hierarchical, arithmetic-coded, a restart out of place, …
			return nil, false
		}
		if !ok {
			return nil, false
		}
	}
	// An APP0 after the scan can still change its mind about RGB.
	if !d.scanned || d.rgb() || d.progressive && !d.reconstruct() {
		return nil, false
	}
	return d.img, true
}

// rgb says whether image/jpeg takes the image as RGB (isRGB): without
// JFIF, with Adobe's transform 0, or components named 'R', 'G', 'B'.
func (d *jpegDecoder) rgb() bool {
	if d.nComp != 3 || d.jfif {
		return false
	}
	return d.adobe && d.adobeTransform == 0 || string([]byte{d.comp[0].id, d.comp[1].id, d.comp[2].id}) == "RGB"
}

// frame reads a SOF segment (B.2.2) into d, accepting gray and YCbCr
// images with the subsampling ratios image/jpeg supports.
func (d *jpegDecoder) frame(seg []byte) bool {
	if d.nComp != 0 || len(seg) < 6 || seg[0] != 8 {
		return false
	}
	d.height = int(binary.BigEndian.Uint16(seg[1:]))
	d.width = int(binary.BigEndian.Uint16(seg[3:]))
	d.nComp = int(seg[5])
	if (d.nComp != 1 && d.nComp != 3) || len(seg) != 6+3*d.nComp {
		return false
	}
	if d.width == 0 || d.height == 0 || int64(d.width)*int64(d.height) > maxDecodePixels {
		return false
	}
	for i := range d.nComp {
		c := &d.comp[i]
		c.id, c.tq = seg[6+3*i], seg[8+3*i]
		c.h, c.v = int(seg[7+3*i]>>4), int(seg[7+3*i]&0x0f)
		for j := range i {
			if d.comp[j].id == c.id {
				return false
			}
		}
		if c.tq > 3 || c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 || c.h == 3 || c.v == 3 {
			return false
		}
		switch {
		case d.nComp == 1:
			c.h, c.v = 1, 1 // a single component is one block an MCU (A.2)
		case i == 0 && c.v == 4:
			return false
		case i == 1 && (d.comp[0].h%c.h != 0 || d.comp[0].v%c.v != 0):
			return false
		case i == 2 && (c.h != d.comp[1].h || c.v != d.comp[1].v):
			return false
		}
	}
	return true
}

// blocks counts the 8×8 blocks of the frame's components.
func (d *jpegDecoder) blocks() int64 {
	var f [3][2]int
	for i, c := range d.comp[:d.nComp] {
		f[i] = [2]int{c.h, c.v}
	}
	return countBlocks(d.width, d.height, f[:d.nComp])
}

// frameBlocks counts the 8×8 blocks of the components of a SOFn segment
// (B.2.2), 0 for one that does not parse.
func frameBlocks(seg []byte) int64 {
	if len(seg) < 6 {
		return 0
	}
	h, w, n := int(binary.BigEndian.Uint16(seg[1:])), int(binary.BigEndian.Uint16(seg[3:])), int(seg[5])
	if len(seg) < 6+3*n {
		return 0
	}
	f := make([][2]int, n)
	for i := range f {
		hv := seg[7+3*i]
		f[i] = [2]int{max(int(hv>>4), 1), max(int(hv&0x0f), 1)}
	}
	return countBlocks(w, h, f)
}

// countBlocks counts the blocks of components of sampling factors f in a
// width×height frame, each of its own size (A.1.1), without an MCU's
// padding.
func countBlocks(width, height int, f [][2]int) int64 {
	hmax, vmax := 1, 1
	for _, c := range f {
		hmax, vmax = max(hmax, c[0]), max(vmax, c[1])
	}
	var n int64
	for _, c := range f {
		w, h := (width*c[0]+hmax-1)/hmax, (height*c[1]+vmax-1)/vmax
		n += int64((w+7)/8) * int64((h+7)/8)
	}
	return n
}

// jpegTooSmall says whether coded bytes of scans are too few for blocks:
// every block's DC is coded, in one bit at the least, in some scan.
func jpegTooSmall(blocks, coded int64) bool { return coded*8 < blocks }

// jpegBudget walks data's segments and returns the blocks of its frame
// (SOF0, 1 or 2; 0 for another or none) and the bytes of its scans' coded
// data, without their restart markers: what comments and metadata, which
// may pad a file to any size, leave out.
func jpegBudget(data []byte) (blocks, coded int64) {
	pos := 2
	for pos+4 <= len(data) && data[pos] == 0xff {
		marker := data[pos+1]
		switch {
		case marker == 0xff: // a fill byte before a marker
			pos++
			continue
		case marker == jpegEOI:
			return blocks, coded
		case marker >= jpegRST0 && marker <= jpegRST0+7 || marker == jpegSOI || marker == 0x01:
			pos += 2 // no length
			continue
		}
		n := int(binary.BigEndian.Uint16(data[pos+2:]))
		if n < 2 || pos+2+n > len(data) {
			return blocks, coded
		}
		seg := data[pos+4 : pos+2+n]
		pos += 2 + n
		// The Huffman-coded frames image/jpeg decodes (CMYK too); an
		// arithmetic-coded one may code a block in under a bit, and is
		// refused before anything is allocated for it.
		if (marker == jpegSOF0 || marker == jpegSOF1 || marker == jpegSOF2) && blocks == 0 {
			blocks = frameBlocks(seg)
		}
		if marker != jpegSOS {
			continue
		}
		// The coded data runs to the next marker but a restart; 0xff00
		// is a stuffed 0xff.
		for pos < len(data) {
			i := bytes.IndexByte(data[pos:], 0xff)
			if i < 0 || pos+i+1 >= len(data) {
				coded += int64(len(data) - pos)
				return blocks, coded
			}
			coded += int64(i)
			pos += i
			next := data[pos+1]
			if next == 0 {
				coded += 2
				pos += 2
				continue
			}
			if next >= jpegRST0 && next <= jpegRST0+7 {
				pos += 2
				continue
			}
			break
		}
	}
	return blocks, coded
}

// dht reads a DHT segment (B.2.4.2).
func (d *jpegDecoder) dht(seg []byte) bool {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return false
		}
		tc, th := seg[0]>>4, seg[0]&0x0f
		if tc > 1 || th > 3 || (d.baseline && th > 1) {
			return false
		}
		total := 0
		for _, c := range seg[1:17] {
			total += int(c)
		}
		if total == 0 || total > 256 || len(seg) < 17+total {
			return false
		}
		if !d.tables.define(tc, th, seg[1:17+total]) {
			return false
		}
		d.defined[tc][th] = true
		seg = seg[17+total:]
	}
	return true
}

// quantTables reads a DQT segment (B.2.4.1).
func (d *jpegDecoder) quantTables(seg []byte) bool {
	for len(seg) > 0 {
		pq, tq := seg[0]>>4, seg[0]&0x0f
		seg = seg[1:]
		if tq > 3 || pq > 1 || len(seg) < 64<<pq {
			return false
		}
		q := &d.quant[tq]
		for i := range q {
			if pq == 0 {
				q[i] = int32(seg[i])
			} else {
				q[i] = int32(binary.BigEndian.Uint16(seg[2*i:]))
			}
		}
		for i, v := range q {
			d.qz[tq][i] = uint64(uint32(v)) | uint64(jpegZig[i])<<32
		}
		d.quantDefined[tq] = true
		seg = seg[64<<pq:]
	}
	return true
}

// scanHeader reads a SOS segment's components (B.2.3), checking their
// tables as image/jpeg does, and returns them by frame index and the
// rest of the segment (the spectral selection and approximation bytes).
// A sequential scan must have every component, image/jpeg's other case.
func (d *jpegDecoder) scanHeader(seg []byte) (order []int, rest []byte, ok bool) {
	if d.nComp == 0 || len(seg) < 1 {
		return nil, nil, false
	}
	n := int(seg[0])
	if n < 1 || n > d.nComp || len(seg) != 4+2*n || !d.progressive && n != d.nComp {
		return nil, nil, false
	}
	totalHV := 0
	for i := range n {
		sel, tables := seg[1+2*i], seg[2+2*i]
		ci := -1
		for j := range d.nComp {
			if d.comp[j].id == sel {
				ci = j
			}
		}
		if ci < 0 || slices.Contains(order, ci) {
			return nil, nil, false
		}
		c := &d.comp[ci]
		c.td, c.ta = tables>>4, tables&0x0f
		if c.td > 3 || c.ta > 3 || (d.baseline && (c.td > 1 || c.ta > 1)) {
			return nil, nil, false
		}
		totalHV += c.h * c.v
		order = append(order, ci)
	}
	if d.nComp > 1 && totalHV > 10 {
		return nil, nil, false
	}
	if d.img == nil {
		h0, v0 := d.comp[0].h, d.comp[0].v
		d.mxx = (d.width + 8*h0 - 1) / (8 * h0)
		d.myy = (d.height + 8*v0 - 1) / (8 * v0)
	}
	return order, seg[1+2*n:], true
}

// scan decodes a sequential image's one scan, whose SOS segment is seg
// and whose entropy-coded data starts at *pos in data, into the image;
// *pos is left at the marker that follows.
func (d *jpegDecoder) scan(seg, data []byte, pos *int, reuse bool) bool {
	order, _, ok := d.scanHeader(seg)
	if !ok {
		return false
	}
	for _, ci := range order {
		c := &d.comp[ci]
		if !d.defined[0][c.td] || !d.defined[1][c.ta] || !d.quantDefined[c.tq] {
			return false
		}
	}
	blocks := 0
	for _, ci := range order {
		blocks += d.comp[ci].h * d.comp[ci].v * d.mxx * d.myy
	}
	for _, ci := range order {
		ta := d.comp[ci].ta
		d.tables.huff[1][ta].lookup(&d.tables.ac[ta], blocks >= jpegPairBlocks)
	}
	d.makeImage(reuse)
	planes, strides := d.out, d.strides

	d.bits = jpegBits{data: data, pos: *pos}
	var blk [64]int32
	for mcu, total := 0, d.mxx*d.myy; mcu < total; mcu++ {
		mx, my := mcu%d.mxx, mcu/d.mxx
		for _, ci := range order {
			c := &d.comp[ci]
			for j := range c.h * c.v {
				bx, by := c.h*mx+j%c.h, c.v*my+j/c.h
				ac, ok := d.block(&blk, c)
				if !ok {
					return false
				}
				dst := planes[ci][8*(by*strides[ci]+bx):]
				if ac {
					jpegIDCTStore(dst, strides[ci], &blk)
				} else {
					jpegFlat(dst, strides[ci], blk[0])
				}
			}
		}
		if d.ri > 0 && (mcu+1)%d.ri == 0 && mcu+1 < total {
			rst := jpegRST0 + byte((mcu+1)/d.ri-1)%8
			p, ok := d.bits.end()
			if !ok || p+2 > len(data) || data[p] != 0xff || data[p+1] != rst {
				return false
			}
			d.bits = jpegBits{data: data, pos: p + 2}
			for i := range d.nComp {
				d.comp[i].dc = 0
			}
		}
	}
	*pos, ok = d.bits.end()
	return ok
}

// end checks that the data decoded so far ended within the last byte
// loaded — nothing missing, nothing left over — and returns where the
// marker after it should be.
func (b *jpegBits) end() (pos int, ok bool) {
	if b.n < b.fake || b.n-b.fake >= 8 {
		return 0, false
	}
	return b.pos, true
}

// block decodes one block's coefficients into blk, dequantised, in
// natural order (F.2.2), and says whether any but the DC was coded. The
// bit reader's state lives in locals here, the hot loop of the whole
// decode, so that it stays in registers.
func (d *jpegDecoder) block(blk *[64]int32, c *jpegComponent) (ac, ok bool) {
	*blk = [64]int32{}
	q := &d.quant[c.tq]
	b := &d.bits
	t, ok := b.decode(&d.tables.huff[0][c.td])
	if !ok || t > 16 {
		return false, false
	}
	c.dc += b.receiveExtend(t)
	blk[0] = c.dc * q[0]
	h := &d.tables.huff[1][c.ta]
	qz := &d.qz[c.tq]
	for k := 1; k < 64; k++ {
		// Bytes up to the next 0xff (stuffing or a marker) load whole.
		if b.pos > b.ff {
			b.ff = len(b.data)
			if i := bytes.IndexByte(b.data[b.pos:], 0xff); i >= 0 {
				b.ff = b.pos + i
			}
		}
		limit := b.ff - 8
		if b.fake != 0 {
			limit = -1
		}
		from := k
		if k, b.acc, b.n, b.pos = acRunFast(blk, qz, h.ac, b.data, limit, k, b.acc, b.n, b.pos); k > from {
			ac = true
		}
		if k > 63 {
			break
		}
		// A coefficient the look-up does not hold (or the bytes ahead
		// hold a 0xff): one symbol the long way.
		if b.n < 32 {
			b.refillBytes()
		}
		var rs uint8
		if e := h.lut[b.acc>>(64-jpegLUTBits)]; e != 0 {
			l := uint(e & 0xff)
			b.acc <<= l
			b.n -= l
			rs = uint8(e >> 8)
		} else if rs, ok = b.decode(h); !ok {
			return false, false
		}
		r, s := int(rs>>4), uint(rs&0x0f)
		if s == 0 {
			if r == 15 { // sixteen zeros
				k += 15
				continue
			}
			// r > 0 is an end-of-band run, which only progressive scans
			// have: image/jpeg reads it anyway.
			return ac, r == 0 && b.n >= b.fake
		}
		k += r
		if k > 63 {
			break
		}
		blk[jpegZig[k]&63] = extend(b.acc, s) * q[k]
		b.acc <<= s
		b.n -= s
		ac = true
	}
	return ac, b.n >= b.fake
}

// acRun decodes a block's coefficients from zig-zag index k while each
// is in the look-up fast, and returns the index it stopped at and the
// bit reader's state then: the hot loop of the whole decode. It loads
// the eight bytes at pos before every coefficient while pos is at most
// limit, which keeps those bytes short of the next 0xff, and stops when
// past it and short of bits.
//
// A load ORs the whole eight bytes into acc below its n bits, not only
// the whole bytes that fit: the bits past those are the next byte's first,
// which the next load puts in the same place, so they read the same. No
// branch decides whether to load, which the CPU mispredicted a quarter of
// the time (Giesen's "Reading bits in far too many ways", variant 4). It
// needs n < 64, which holds once a coefficient is read: hence the first
// load's test.
func acRun(blk *[64]int32, qz *[64]uint64, fast *jpegACLUT, data []byte, limit, k int, acc uint64, n uint, pos int) (int, uint64, uint, int) {
	for k < 64 {
		if pos <= limit && pos+8 <= len(data) && n < 64 {
			acc |= binary.BigEndian.Uint64(data[pos:]) >> n
			pos += int(63-n) >> 3
			n |= 56
		} else if n < 32 {
			break
		}
		e := fast[acc>>(64-jpegACBits)]
		if e == 0 || k+int(e>>8&0xff) > 63 {
			break
		}
		// Masks the compiler cannot see through otherwise: the indexes
		// are at most 63 here, and a length at most 11, so neither a
		// bounds check nor a shift's test for 64 or more is needed. The
		// second coefficient is stored first: for an entry of one, it is
		// a 0 at the first's index, overwritten.
		k1, k2 := (k+int(e>>16&0xff))&63, (k+int(e>>8&0xff))&63
		z2, z1 := qz[k2], qz[k1]
		blk[z2>>32&63] = int32(int16(e>>48)) * int32(z2)
		blk[z1>>32&63] = int32(int16(e>>32)) * int32(z1)
		k = k2 + 1
		l := uint(e) & 63
		acc <<= l
		n -= l
	}
	return k, acc, n, pos
}

// makeImage makes the image the scans decode into (d.img, d.out and
// d.strides), with its planes padded to whole MCUs as image/jpeg's are.
// A progressive image's planes start zeroed, as image/jpeg's new ones
// are: it leaves the padding's blocks unwritten.
func (d *jpegDecoder) makeImage(reuse bool) {
	if d.img != nil {
		return
	}
	r := image.Rect(0, 0, d.width, d.height)
	plane := func(i, w, h int) {
		if reuse {
			d.planes[i] = grow(d.planes[i], w*h)
			d.out[i] = d.planes[i]
			if d.progressive {
				clear(d.out[i])
			}
		} else {
			d.out[i] = make([]byte, w*h)
		}
		d.strides[i] = w
	}
	if d.nComp == 1 {
		plane(0, 8*d.mxx, 8*d.myy)
		d.img = &image.Gray{Pix: d.out[0], Stride: d.strides[0], Rect: r}
		return
	}
	h0, v0 := d.comp[0].h, d.comp[0].v
	h1, v1 := d.comp[1].h, d.comp[1].v
	var ratio image.YCbCrSubsampleRatio
	switch (h0/h1)<<4 | v0/v1 {
	case 0x11:
		ratio = image.YCbCrSubsampleRatio444
	case 0x12:
		ratio = image.YCbCrSubsampleRatio440
	case 0x21:
		ratio = image.YCbCrSubsampleRatio422
	case 0x22:
		ratio = image.YCbCrSubsampleRatio420
	case 0x41:
		ratio = image.YCbCrSubsampleRatio411
	case 0x42:
		ratio = image.YCbCrSubsampleRatio410
	}
	plane(0, 8*h0*d.mxx, 8*v0*d.myy)
	plane(1, 8*h1*d.mxx, 8*v1*d.myy)
	plane(2, 8*h1*d.mxx, 8*v1*d.myy)
	d.img = &image.YCbCr{
		Y: d.out[0], Cb: d.out[1], Cr: d.out[2],
		YStride: d.strides[0], CStride: d.strides[1],
		SubsampleRatio: ratio, Rect: r,
	}
}

// jpegStore level-shifts and clamps an inverse-transformed block into dst,
// as image/jpeg does.
func jpegStore(dst []byte, stride int, blk *[64]int32) {
	for y := range 8 {
		row := dst[y*stride : y*stride+8]
		for x, c := range blk[8*y : 8*y+8] {
			switch {
			case c < -128:
				row[x] = 0
			case c > 127:
				row[x] = 255
			default:
				row[x] = uint8(c + 128)
			}
		}
	}
}
