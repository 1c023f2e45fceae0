package preprocess

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// A test-only JPEG encoder, so that tests control what image/jpeg's
// encoder never writes: restart intervals, every subsampling ratio,
// Huffman tables of every shape (codes up to 16 bits, tables 2 and 3,
// redefined), 16-bit quantisation tables, a scan listing the components
// in another order than the frame, DC differences of 16 bits, runs past
// a block's end. It codes random coefficients, not pixels: the decoders
// under test only have to agree on what they make of them.

// testHuffman is a canonical Huffman table and each value's code.
type testHuffman struct {
	counts [16]byte
	vals   []byte
	code   map[byte][2]uint32 // code, length
}

// randomHuffman makes a random complete-enough canonical table coding
// every one of syms, sometimes leaving the all-ones code free as T.81
// asks, with lengths skewed short or long.
func randomHuffman(rng *rand.Rand, syms []byte) testHuffman {
	syms = slices.Clone(syms)
	rng.Shuffle(len(syms), func(i, j int) { syms[i], syms[j] = syms[j], syms[i] })
	reserve, skew := rng.IntN(2), rng.IntN(3)
	h := testHuffman{vals: syms, code: map[byte][2]uint32{}}
	left, avail := len(syms), 2 // codes still to place; free codes of this length
	for l := 1; l <= 16; l++ {
		// The most codes of length l that leave room for the rest.
		hi := min(avail, left)
		for (avail-hi)<<(16-l)-reserve < left-hi {
			hi--
		}
		c := hi
		switch {
		case l == 16:
			c = left
		case skew == 0:
			c = rng.IntN(hi + 1)
		case skew == 1:
			c = rng.IntN(min(hi, 3) + 1)
		default:
			c = rng.IntN(hi/2 + 1)
		}
		h.counts[l-1] = byte(c)
		left -= c
		avail = 2 * (avail - c)
	}
	code, k := uint32(0), 0
	for l := 1; l <= 16; l++ {
		for range int(h.counts[l-1]) {
			h.code[syms[k]] = [2]uint32{code, uint32(l)}
			code++
			k++
		}
		code <<= 1
	}
	return h
}

// testBits writes entropy-coded data, stuffing a 0 after each 0xff.
type testBits struct {
	out []byte
	acc byte
	n   int
}

func (w *testBits) put(v, l uint32) {
	for i := int(l) - 1; i >= 0; i-- {
		w.acc = w.acc<<1 | byte(v>>i&1)
		if w.n++; w.n == 8 {
			w.out = append(w.out, w.acc)
			if w.acc == 0xff {
				w.out = append(w.out, 0)
			}
			w.acc, w.n = 0, 0
		}
	}
}

// flush pads the last byte with ones (F.1.2.3).
func (w *testBits) flush() {
	for w.n != 0 {
		w.put(1, 1)
	}
}

// category returns v's size category and the bits that code it (F.1.2.1).
func category(v int32) (size, bits uint32) {
	a := max(v, -v)
	for a>>size != 0 {
		size++
	}
	if v < 0 {
		v--
	}
	return size, uint32(v) & (1<<size - 1)
}

func segment(marker byte, body []byte) []byte {
	return append([]byte{0xff, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)}, body...)
}

// testJPEG is what jpegOf writes.
type testJPEG struct {
	nComp     int
	hv        [3][2]int // sampling factors
	w, h      int
	ri        int   // restart interval, in MCUs
	sof1      bool  // extended sequential: four tables of each class
	q16       bool  // some 16-bit quantisation tables
	jfif, rgb bool  // a JFIF APP0; components named 'R', 'G', 'B'
	order     []int // the scan's components, by frame index
	pastEnd   bool  // some blocks end in a run past coefficient 63
	bigDC     bool  // some DC differences of 16 bits
}

func randomTestJPEG(rng *rand.Rand) testJPEG {
	o := testJPEG{nComp: 3, w: 1 + rng.IntN(80), h: 1 + rng.IntN(80)}
	if rng.IntN(3) == 0 {
		o.nComp = 1
	}
	factors := []int{1, 2, 4}
	if o.nComp == 1 {
		o.hv[0] = [2]int{factors[rng.IntN(3)], factors[rng.IntN(3)]}
	} else {
		for {
			h0, v0, h1, v1 := factors[rng.IntN(3)], factors[rng.IntN(2)], factors[rng.IntN(3)], factors[rng.IntN(2)]
			if h0%h1 == 0 && v0%v1 == 0 && h0*v0+2*h1*v1 <= 10 {
				o.hv = [3][2]int{{h0, v0}, {h1, v1}, {h1, v1}}
				break
			}
		}
	}
	if rng.IntN(10) == 0 {
		o.w, o.h = 100+rng.IntN(300), 100+rng.IntN(200)
	}
	if rng.IntN(5) >= 2 {
		o.ri = 1 + rng.IntN(10)
	}
	o.sof1, o.q16, o.jfif = rng.IntN(2) == 0, rng.IntN(2) == 0, rng.IntN(2) == 0
	o.rgb = o.nComp == 3 && rng.IntN(8) == 0
	o.order = []int{0, 1, 2}[:o.nComp]
	if rng.IntN(2) == 0 {
		rng.Shuffle(o.nComp, func(i, j int) { o.order[i], o.order[j] = o.order[j], o.order[i] })
	}
	o.pastEnd, o.bigDC = rng.IntN(4) == 0, rng.IntN(4) == 0
	return o
}

// jpegOf encodes o with random tables and coefficients, and COM and APPn
// segments here and there.
func jpegOf(rng *rand.Rand, o testJPEG) []byte {
	out := []byte{0xff, jpegSOI}
	extra := func() {
		for range rng.IntN(3) {
			if rng.IntN(2) == 0 {
				out = append(out, segment(jpegCOM, []byte("comment"))...)
			} else {
				out = append(out, segment(0xe1+byte(rng.IntN(13)), []byte("Exif\x00\x00junk"))...)
			}
		}
	}
	if o.jfif {
		out = append(out, segment(jpegAPP0, []byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"))...)
	}
	extra()
	var dqt []byte
	for t := range 4 {
		if o.q16 && rng.IntN(2) == 0 {
			dqt = append(dqt, 1<<4|byte(t))
			for range 64 {
				v := rng.IntN(65536)
				dqt = append(dqt, byte(v>>8), byte(v))
			}
		} else {
			dqt = append(dqt, byte(t))
			for range 64 {
				dqt = append(dqt, byte(1+rng.IntN(255)))
			}
		}
		if rng.IntN(3) == 0 { // one table a segment, or several
			out, dqt = append(out, segment(jpegDQT, dqt)...), nil
		}
	}
	if len(dqt) > 0 {
		out = append(out, segment(jpegDQT, dqt)...)
	}
	tables := 2
	if o.sof1 {
		tables = 4
	}
	dcSyms := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	acSyms := []byte{0x00, 0xf0}
	for r := range 16 {
		for s := 1; s <= 15; s++ {
			acSyms = append(acSyms, byte(r<<4|s))
		}
	}
	var dc, ac [4]testHuffman
	var dht []byte
	for t := range tables {
		for range 1 + rng.IntN(2) { // sometimes defined twice: the last counts
			dc[t], ac[t] = randomHuffman(rng, dcSyms), randomHuffman(rng, acSyms)
			for class, h := range []testHuffman{dc[t], ac[t]} {
				dht = append(append(append(dht, byte(class<<4|t)), h.counts[:]...), h.vals...)
			}
			if rng.IntN(2) == 0 {
				out, dht = append(out, segment(jpegDHT, dht)...), nil
			}
		}
	}
	if len(dht) > 0 {
		out = append(out, segment(jpegDHT, dht)...)
	}
	extra()

	ids := []byte{1, 2, 3}
	if o.rgb {
		ids = []byte("RGB")
	} else if rng.IntN(3) == 0 {
		ids = []byte{byte(rng.IntN(80)), byte(80 + rng.IntN(80)), byte(160 + rng.IntN(90))}
	}
	sof := []byte{8, byte(o.h >> 8), byte(o.h), byte(o.w >> 8), byte(o.w), byte(o.nComp)}
	for i := range o.nComp {
		sof = append(sof, ids[i], byte(o.hv[i][0]<<4|o.hv[i][1]), byte(rng.IntN(4)))
	}
	marker := byte(jpegSOF0)
	if o.sof1 {
		marker = jpegSOF1
	}
	out = append(out, segment(marker, sof)...)
	extra()
	if o.ri > 0 {
		out = append(out, segment(jpegDRI, []byte{byte(o.ri >> 8), byte(o.ri)})...)
	}
	td, ta := make([]int, o.nComp), make([]int, o.nComp)
	sos := []byte{byte(o.nComp)}
	for _, c := range o.order {
		td[c], ta[c] = rng.IntN(tables), rng.IntN(tables)
		sos = append(sos, ids[c], byte(td[c]<<4|ta[c]))
	}
	out = append(out, segment(jpegSOS, append(sos, 0, 63, 0))...)

	hv := o.hv
	if o.nComp == 1 {
		hv[0] = [2]int{1, 1} // one block an MCU, whatever the frame says
	}
	mcus := ((o.w + 8*hv[0][0] - 1) / (8 * hv[0][0])) * ((o.h + 8*hv[0][1] - 1) / (8 * hv[0][1]))
	w := &testBits{}
	emit := func(h testHuffman, sym byte) {
		c, ok := h.code[sym]
		if !ok {
			panic(fmt.Sprintf("no code for %#x", sym))
		}
		w.put(c[0], c[1])
	}
	style := rng.IntN(4)
	for mcu := range mcus {
		for _, c := range o.order {
			for range hv[c][0] * hv[c][1] {
				var diff int32
				switch {
				case o.bigDC && rng.IntN(4) == 0:
					diff = int32(32768 + rng.IntN(32768))
					if rng.IntN(2) == 0 {
						diff = -diff
					}
				case rng.IntN(3) > 0:
					diff = rng.Int32N(1<<rng.IntN(12)) - rng.Int32N(1<<rng.IntN(12))
				}
				size, bits := category(diff)
				emit(dc[td[c]], byte(size))
				w.put(bits, size)

				var coef [64]int32
				switch (style + rng.IntN(2)) % 4 {
				case 1: // a few small ones
					for range rng.IntN(6) {
						coef[1+rng.IntN(63)] = rng.Int32N(7) - 3
					}
				case 2: // sparse, up to 15 bits
					for k := 1; k < 64; k++ {
						if rng.IntN(3) == 0 {
							coef[k] = rng.Int32N(1<<(1+rng.IntN(15))) - rng.Int32N(1<<rng.IntN(15))
						}
					}
				case 3: // dense
					for k := 1; k < 64; k++ {
						coef[k] = rng.Int32N(201) - 100
					}
				}
				last := 0
				for k := 1; k < 64; k++ {
					if coef[k] != 0 {
						last = k
					}
				}
				run := 0
				for k := 1; k <= last; k++ {
					if coef[k] == 0 {
						run++
						continue
					}
					for ; run >= 16; run -= 16 {
						emit(ac[ta[c]], 0xf0)
					}
					size, bits := category(coef[k])
					emit(ac[ta[c]], byte(run<<4)|byte(size))
					w.put(bits, size)
					run = 0
				}
				switch {
				case last == 63:
				case o.pastEnd && 63-last <= 15 && rng.IntN(2) == 0:
					// A run that ends past 63: the block ends there,
					// without the value's bits.
					r := 63 - last + rng.IntN(last-47)
					emit(ac[ta[c]], byte(r<<4|1+rng.IntN(15)))
				case o.pastEnd && rng.IntN(2) == 0:
					for k := last + 1; k <= 63; k += 16 {
						emit(ac[ta[c]], 0xf0)
					}
				default:
					emit(ac[ta[c]], 0x00)
				}
			}
		}
		if o.ri > 0 && (mcu+1)%o.ri == 0 && mcu+1 < mcus {
			w.flush()
			w.out = append(w.out, 0xff, jpegRST0+byte(((mcu+1)/o.ri-1)%8))
		}
	}
	w.flush()
	out = append(out, w.out...)
	extra()
	return append(out, 0xff, jpegEOI)
}

// TestDecodeJPEGGenerated decodes what jpegOf writes, and damaged copies
// of it: every clean file but an RGB one must take the fast path, and
// whatever it takes must be image/jpeg's image.
func TestDecodeJPEGGenerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(35, 36))
	for i := range 1000 {
		o := randomTestJPEG(rng)
		data := jpegOf(rng, o)
		if took := checkJPEGAgrees(t, data); took == (o.rgb && !o.jfif) {
			t.Fatalf("file %d (%+v): fast path took it: %v", i, o, took)
		}
		n := len(data)
		for _, v := range [][]byte{
			append(slices.Clone(data[:n-2]), 0xff, jpegRST0, 0xff, jpegEOI), // a final RST
			append(slices.Clone(data[:n-2]), 0xff, 0xff, jpegEOI),           // a fill byte
			append(slices.Clone(data[:n-2]), 0x12, 0xff, jpegEOI),           // junk before a marker
			append(slices.Clone(data[:n-2]), 0xff, 0x00, 0xff, jpegEOI),     // a stuffed zero
			data[:n-2],         // no EOI
			data[:rng.IntN(n)], // cut
			append(slices.Clone(data), 1, 2, 3, 0xff, jpegSOI), // after EOI
		} {
			checkJPEGAgrees(t, v)
		}
		for range 5 {
			b := bytes.Clone(data)
			for range 1 + rng.IntN(2) {
				b[rng.IntN(len(b))] ^= 1 << rng.IntN(8)
			}
			checkJPEGAgrees(t, b)
		}
	}
}
