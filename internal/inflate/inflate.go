// Package inflate decodes DEFLATE streams (RFC 1951) that lie whole in
// memory into a buffer whose size the caller knows, such as a PNG's pixel
// rows.
//
// compress/flate decodes a stream of any length from an io.Reader through
// a 32 KiB window, and builds each block's Huffman tables at full size. For
// a small image that setup is most of the work: a 28×28 digit spent a third
// of its decode in building tables. Here the output buffer is the window,
// the tables are sized to the codes they hold, and a Decoder is reused, so
// decoding such an image costs a fraction of what it did.
//
// Decode is at least as strict as compress/flate: whatever it decodes,
// compress/flate decodes to the same bytes, reading the same input. It
// declines a few streams compress/flate accepts (see Decode), which callers
// that have compress/flate to fall back on can leave to it.
package inflate

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// ErrCorrupt is returned for a stream that is not valid DEFLATE, or that
// ends before its final block does.
var ErrCorrupt = errors.New("inflate: corrupt or truncated stream")

// ErrShortDst is returned when the output does not fit in dst.
var ErrShortDst = errors.New("inflate: output longer than the buffer")

// Decoder holds the Huffman tables between streams; reusing one saves
// their allocation. A Decoder is not safe for concurrent use.
type Decoder struct {
	lit, dist, lens table
	lengths         [maxLit + maxDist]uint8
}

const (
	maxLit  = 286 // literal/length symbols a dynamic block may code
	maxDist = 30  // distance symbols
	maxBits = 15  // longest Huffman code
)

// Decode decompresses the DEFLATE stream at the start of src into dst and
// returns the number of bytes written and the number of bytes of src the
// stream took, its final byte included; what follows is left unread. It
// returns ErrShortDst when the output would not fit in dst, ErrCorrupt for
// anything else wrong with the stream.
//
// It declines (with ErrCorrupt) incomplete Huffman codes other than a lone
// one-bit code, as compress/flate does; encoders do not write them.
func (d *Decoder) Decode(dst, src []byte) (written, read int, err error) {
	s := state{src: src, dst: dst}
	for final := false; !final; {
		s.refill()
		final = s.bits&1 == 1
		kind := s.bits >> 1 & 3
		s.consume(3)
		switch kind {
		case 0:
			err = s.stored()
		case 1:
			err = s.huffman(fixed())
		case 2:
			err = d.dynamic(&s)
			if err == nil {
				err = s.huffman(&d.lit, &d.dist)
			}
		default:
			err = ErrCorrupt
		}
		if err != nil {
			return s.w, 0, err
		}
	}
	s.nb -= s.nb & 7 // the final block's last byte is the stream's
	read = s.pos - int(s.nb/8)
	if read > len(src) {
		return s.w, 0, ErrCorrupt // the final block needed bits past the end
	}
	return s.w, read, nil
}

// state is a stream being decoded: its input as a bit buffer, and its
// output so far.
type state struct {
	src  []byte
	pos  int    // the next byte of src to enter bits; past len(src), zeros enter
	bits uint64 // the unread bits, next lowest
	nb   uint   // how many
	dst  []byte
	w    int // bytes written to dst
}

// refill tops the bit buffer up to at least 56 bits. Past the end of src
// it shifts in zero bytes, so decoding never checks for the end inside a
// symbol; reading too far shows in overrun, which each block's end and the
// symbol loop check.
func (s *state) refill() {
	if s.nb > 56 {
		return
	}
	if s.pos+8 <= len(s.src) {
		s.bits |= binary.LittleEndian.Uint64(s.src[s.pos:]) << s.nb
		s.pos += int(63-s.nb) >> 3
		s.nb |= 56
		return
	}
	for s.nb <= 56 {
		if s.pos < len(s.src) {
			s.bits |= uint64(s.src[s.pos]) << s.nb
		}
		s.pos++
		s.nb += 8
	}
}

// overrun reports whether more bits were consumed than src holds.
func (s *state) overrun() bool { return s.pos-int(s.nb/8) > len(s.src) }

func (s *state) consume(n uint) {
	s.bits >>= n
	s.nb -= n
}

// stored copies a stored block.
func (s *state) stored() error {
	s.consume(s.nb & 7) // the block's data starts at the next byte
	s.pos -= int(s.nb / 8)
	s.bits, s.nb = 0, 0
	if s.pos+4 > len(s.src) {
		return ErrCorrupt
	}
	n := int(binary.LittleEndian.Uint16(s.src[s.pos:]))
	if uint16(n) != ^binary.LittleEndian.Uint16(s.src[s.pos+2:]) {
		return ErrCorrupt
	}
	s.pos += 4
	if s.pos+n > len(s.src) {
		return ErrCorrupt
	}
	if s.w+n > len(s.dst) {
		return ErrShortDst
	}
	s.w += copy(s.dst[s.w:], s.src[s.pos:s.pos+n])
	s.pos += n
	return nil
}

// codeLengthOrder is the order in which a dynamic block's header gives the
// lengths of the code-length code.
var codeLengthOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

// dynamic reads a dynamic block's header and builds its tables into d.
func (d *Decoder) dynamic(s *state) error {
	s.refill()
	nlit := int(s.bits&31) + 257
	ndist := int(s.bits>>5&31) + 1
	nlen := int(s.bits>>10&15) + 4
	s.consume(14)
	if nlit > maxLit || ndist > maxDist {
		return ErrCorrupt
	}
	var lens [19]uint8
	for i := 0; i < nlen; i++ {
		s.refill()
		lens[codeLengthOrder[i]] = uint8(s.bits & 7)
		s.consume(3)
	}
	if !d.lens.build(lens[:], 7) {
		return ErrCorrupt
	}
	lengths := d.lengths[:nlit+ndist]
	for i := 0; i < len(lengths); {
		s.refill()
		sym, ok := d.lens.decode(s)
		if !ok {
			return ErrCorrupt
		}
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return ErrCorrupt
			}
			rep, val = 3+int(s.bits&3), lengths[i-1]
			s.consume(2)
		case 17:
			rep = 3 + int(s.bits&7)
			s.consume(3)
		default:
			rep = 11 + int(s.bits&127)
			s.consume(7)
		}
		if i+rep > len(lengths) {
			return ErrCorrupt
		}
		for range rep {
			lengths[i] = val
			i++
		}
	}
	if s.overrun() || lengths[256] == 0 { // every block ends with a code 256
		return ErrCorrupt
	}
	if !d.lit.build(lengths[:nlit], 10) || !d.dist.build(lengths[nlit:], 8) {
		return ErrCorrupt
	}
	return nil
}

// Length and distance symbols: base values and extra bits (RFC 1951 3.2.5).
var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
)

// huffman decodes a block's symbols up to its end-of-block code. The bit
// buffer and the output position live in locals, where the compiler keeps
// them in registers; s is written back on the way out.
func (s *state) huffman(lit, dist *table) error {
	src, dst := s.src, s.dst
	bits, nb, pos, w := s.bits, s.nb, s.pos, s.w
	var err error
loop:
	for {
		// A literal/length code, its extra bits, a distance code and its
		// extra bits take at most 15+5+15+13 = 48 bits.
		if nb < 48 {
			if pos+8 <= len(src) {
				bits |= binary.LittleEndian.Uint64(src[pos:]) << nb
				pos += int(63-nb) >> 3
				nb |= 56
			} else {
				s.bits, s.nb, s.pos = bits, nb, pos
				s.refill()
				bits, nb, pos = s.bits, s.nb, s.pos
				if pos > len(src)+8 {
					err = ErrCorrupt // decoding the zeros past the end
					break
				}
			}
		}
		e := lit.lookup(bits)
		n := uint(e & 31)
		if n == 0 {
			err = ErrCorrupt
			break loop
		}
		bits >>= n
		nb -= n
		sym := e >> 16
		if sym < 256 {
			if w >= len(dst) {
				err = ErrShortDst
				break loop
			}
			dst[w] = byte(sym)
			w++
			continue
		}
		if sym == 256 {
			break
		}
		sym -= 257
		if sym >= uint32(len(lengthBase)) {
			err = ErrCorrupt
			break loop
		}
		n = uint(lengthExtra[sym])
		length := int(lengthBase[sym]) + int(bits&(1<<n-1))
		bits >>= n
		nb -= n
		e = dist.lookup(bits)
		n = uint(e & 31)
		dsym := e >> 16
		if n == 0 || dsym >= uint32(len(distBase)) {
			err = ErrCorrupt
			break loop
		}
		bits >>= n
		nb -= n
		n = uint(distExtra[dsym])
		back := int(distBase[dsym]) + int(bits&(1<<n-1))
		bits >>= n
		nb -= n
		if back > w {
			err = ErrCorrupt
			break loop
		}
		end := w + length
		if end > len(dst) {
			err = ErrShortDst
			break loop
		}
		from := w - back
		switch {
		case back >= length: // apart: one copy
			w += copy(dst[w:end], dst[from:w])
		case back == 1: // a run of one byte, as rows of a flat colour are
			b := dst[from]
			for ; w < end; w++ {
				dst[w] = b
			}
		default:
			// The copy overlaps what it writes; each pass copies all that
			// is written so far, doubling.
			for w < end {
				w += copy(dst[w:end], dst[from:w])
			}
		}
	}
	s.bits, s.nb, s.pos, s.w = bits, nb, pos, w
	if err == nil && s.overrun() {
		return ErrCorrupt
	}
	return err
}

// table decodes one Huffman code: a primary table indexed by the next
// bits of the input, whose entries for codes longer than its index link
// to subtables indexed by the bits after. An entry is sym<<16 | length for
// a code, off<<16 | linked | subBits<<8 for a link to the subtable at off,
// and 0 where no code is.
type table struct {
	entries []uint32
	bits    uint // of the primary index
}

const linked = 1 << 7

// noEntries is a blank subtable of the largest size: 15 bits of code less
// a primary index of 8 (distance codes).
var noEntries [1 << 7]uint32

// build makes t decode the canonical code with the given code lengths
// (0: the symbol has no code), indexing the primary table with at most
// maxPrimary bits. It reports false for a code that is oversubscribed, or
// incomplete but for the lone one-bit code that RFC 1951 allows. A code
// with no symbols builds: decoding with it fails.
func (t *table) build(lengths []uint8, maxPrimary uint) bool {
	// Counted four ways: most lengths are 0, and a single count would
	// wait on each increment's store before the next.
	var counts [4][maxBits + 1]uint16
	i := 0
	for ; i+4 <= len(lengths); i += 4 {
		counts[0][lengths[i]&maxBits]++
		counts[1][lengths[i+1]&maxBits]++
		counts[2][lengths[i+2]&maxBits]++
		counts[3][lengths[i+3]&maxBits]++
	}
	for ; i < len(lengths); i++ {
		counts[0][lengths[i]&maxBits]++
	}
	var count [maxBits + 1]uint16
	for l := 1; l <= maxBits; l++ {
		count[l] = counts[0][l] + counts[1][l] + counts[2][l] + counts[3][l]
	}
	// Check the code is complete (Kraft), and find where each length's
	// symbols start in canonical order: by length, then symbol.
	var start [maxBits + 2]uint16
	longest, code := uint(0), 0
	for l := uint(1); l <= maxBits; l++ {
		code = code<<1 + int(count[l])
		start[l+1] = start[l] + count[l]
		if count[l] != 0 {
			longest = l
		}
	}
	code >>= maxBits - longest
	complete := code == 1<<longest
	if !complete && !(code == 1 && longest == 1) && longest != 0 {
		return false
	}
	var syms [maxLit + 2]uint16
	for sym, l := range lengths {
		if l != 0 {
			syms[start[l]] = uint16(sym)
			start[l]++
		}
	}

	t.bits = max(min(longest, maxPrimary), 1)
	size := 1 << t.bits
	var sub uint // every subtable's index bits
	if longest > t.bits {
		sub = longest - t.bits
	}
	if cap(t.entries) < size {
		t.entries = make([]uint32, size, 2*size)
	}
	t.entries = t.entries[:size]
	if !complete {
		clear(t.entries) // some entries stay empty
	}
	// Canonical codes taken in order count up, so the long codes that
	// share a primary entry come one after another.
	c, n, prefix := 0, uint(1), -1
	for _, sym := range syms[:start[longest]] {
		for lengths[sym] != uint8(n) {
			c <<= 1
			n++
		}
		rev := int(bits.Reverse16(uint16(c)) >> (16 - n))
		c++
		e := uint32(sym)<<16 | uint32(n)
		if n <= t.bits {
			for i := rev; i < size; i += 1 << n {
				t.entries[i] = e
			}
			continue
		}
		if rev&(size-1) != prefix {
			prefix = rev & (size - 1)
			t.entries[prefix] = uint32(len(t.entries))<<16 | linked | uint32(sub)<<8
			t.entries = append(t.entries, noEntries[:1<<sub]...)
		}
		off := int(t.entries[prefix] >> 16)
		subtable := t.entries[off : off+1<<sub]
		for i := rev >> t.bits; i < len(subtable); i += 1 << (n - t.bits) {
			subtable[i] = e
		}
	}
	return true
}

// lookup returns the entry of the code at the bottom of bits, which hold
// at least the longest code's.
func (t *table) lookup(bits uint64) uint32 {
	e := t.entries[bits&(1<<t.bits-1)]
	if e&linked != 0 {
		e = t.entries[e>>16+uint32(bits>>t.bits)&(1<<(e>>8&15)-1)]
	}
	return e
}

// decode reads one symbol; the caller has refilled the bit buffer.
func (t *table) decode(s *state) (uint32, bool) {
	e := t.lookup(s.bits)
	n := uint(e & 31)
	if n == 0 {
		return 0, false
	}
	s.consume(n)
	return e >> 16, true
}

// fixed returns the tables of RFC 1951's fixed code. Distance codes 30 and
// 31 have codes there but no meaning; decoding them fails in huffman.
func fixed() (lit, dist *table) { return &fixedLit, &fixedDist }

var fixedLit, fixedDist = func() (lit, dist table) {
	var l [288]uint8
	for i := range l {
		switch {
		case i < 144:
			l[i] = 8
		case i < 256:
			l[i] = 9
		case i < 280:
			l[i] = 7
		default:
			l[i] = 8
		}
	}
	lit.build(l[:], 9)
	var d [32]uint8
	for i := range d {
		d[i] = 5
	}
	dist.build(d[:], 5)
	return lit, dist
}()
