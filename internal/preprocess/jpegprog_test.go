package preprocess

// A test-only progressive JPEG encoder, for TestDecodeProgressiveGenerated:
// image/jpeg writes only baseline files, and the progressive files at hand
// are a few, of few scan layouts.

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
)

// Progressive files of random scan scripts (see progressiveOf) decode as
// image/jpeg decodes them, as do the same files cut short or with a bit
// flipped: the fast path takes every clean one.
func TestDecodeProgressiveGenerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	for i := range 300 {
		data := progressiveOf(rng)
		if !checkJPEGAgrees(t, data) {
			t.Fatalf("file %d: the fast path declined a clean progressive file", i)
		}
		for range 8 {
			bad := slices.Clone(data)
			if rng.IntN(2) == 0 {
				bad = bad[:rng.IntN(len(bad))]
			} else {
				bad[rng.IntN(len(bad))] ^= 1 << rng.IntN(8)
			}
			checkJPEGAgrees(t, bad)
		}
	}
}

// progEnc writes one progressive scan's entropy-coded data from
// coefficients, as libjpeg's jcphuff.c does: end-of-band runs carried from
// block to block, and in refinement scans the correction bits of the
// coefficients a run or an end-of-band passes over, buffered until the
// symbol they follow is written.
type progEnc struct {
	w   *testBits
	eob int    // blocks in the end-of-band run not yet written
	be  []byte // the run's buffered correction bits
	ac  testHuffman
}

// emit writes sym's code.
func (e *progEnc) emit(h testHuffman, sym byte) {
	c, ok := h.code[sym]
	if !ok {
		panic(fmt.Sprintf("no code for %#x", sym))
	}
	e.w.put(c[0], c[1])
}

// emitEOB writes the pending end-of-band run and its correction bits.
func (e *progEnc) emitEOB() {
	if e.eob == 0 {
		return
	}
	nb := bits.Len(uint(e.eob)) - 1
	e.emit(e.ac, byte(nb<<4))
	if nb > 0 {
		e.w.put(uint32(e.eob)&(1<<nb-1), uint32(nb))
	}
	e.eob = 0
	for _, b := range e.be {
		e.w.put(uint32(b), 1)
	}
	e.be = e.be[:0]
}

// absShift is |v| >> al, the magnitude a scan of point transform al codes.
func absShift(v int32, al uint) int32 {
	if v < 0 {
		return (-v) >> al
	}
	return v >> al
}

// acFirst codes a block's first scan of band ss..se (G.1.2.2).
func (e *progEnc) acFirst(b *[64]int32, ss, se int, al uint) {
	r := 0
	for k := ss; k <= se; k++ {
		v := b[jpegZig[k]]
		t := absShift(v, al)
		if t == 0 {
			r++
			continue
		}
		t2 := t
		if v < 0 {
			t2 = ^t
		}
		e.emitEOB()
		for r > 15 {
			e.emit(e.ac, 0xf0)
			r -= 16
		}
		nb := bits.Len32(uint32(t))
		e.emit(e.ac, byte(r<<4|nb))
		e.w.put(uint32(t2)&(1<<nb-1), uint32(nb))
		r = 0
	}
	if r > 0 {
		e.eob++
		if e.eob == 0x7fff {
			e.emitEOB()
		}
	}
}

// acRefine codes bit al of a block's band ss..se (G.1.2.3).
func (e *progEnc) acRefine(b *[64]int32, ss, se int, al uint) {
	var abs [64]int32
	eobk := 0
	for k := ss; k <= se; k++ {
		abs[k] = absShift(b[jpegZig[k]], al)
		if abs[k] == 1 {
			eobk = k
		}
	}
	r := 0
	var br []byte
	for k := ss; k <= se; k++ {
		t := abs[k]
		if t == 0 {
			r++
			continue
		}
		for r > 15 && k <= eobk {
			e.emitEOB()
			e.emit(e.ac, 0xf0)
			r -= 16
			for _, x := range br {
				e.w.put(uint32(x), 1)
			}
			br = br[:0]
		}
		if t > 1 {
			br = append(br, byte(t&1))
			continue
		}
		e.emitEOB()
		e.emit(e.ac, byte(r<<4|1))
		if b[jpegZig[k]] < 0 {
			e.w.put(0, 1)
		} else {
			e.w.put(1, 1)
		}
		for _, x := range br {
			e.w.put(uint32(x), 1)
		}
		br = br[:0]
		r = 0
	}
	if r > 0 || len(br) > 0 {
		e.eob++
		e.be = append(e.be, br...)
		if e.eob == 0x7fff || len(e.be) > 900 {
			e.emitEOB()
		}
	}
}

// progressiveOf writes a random progressive JPEG of random coefficients:
// one or three components at any sampling factors, the DC in one scan or
// one a component, each component's AC in up to three bands of random
// point transforms refined down to bit 0, the scans interleaved at random
// (DC refinements among them), each with its own random Huffman tables;
// 8- or 16-bit quantisation tables, sometimes after the scans.
func progressiveOf(rng *rand.Rand) []byte {
	nComp := 3
	if rng.IntN(3) == 0 {
		nComp = 1
	}
	w, h := 1+rng.IntN(120), 1+rng.IntN(120)
	if rng.IntN(8) == 0 {
		w, h = 1+rng.IntN(300), 1+rng.IntN(300)
	}
	var hv [3][2]int
	factors := []int{1, 2, 4}
	if nComp == 1 {
		hv[0] = [2]int{factors[rng.IntN(3)], factors[rng.IntN(3)]}
	} else {
		for {
			h0, v0, h1, v1 := factors[rng.IntN(3)], factors[rng.IntN(2)], factors[rng.IntN(3)], factors[rng.IntN(2)]
			if h0%h1 == 0 && v0%v1 == 0 && h0*v0+2*h1*v1 <= 10 {
				hv = [3][2]int{{h0, v0}, {h1, v1}, {h1, v1}}
				break
			}
		}
	}
	fhv := hv
	if nComp == 1 {
		hv[0] = [2]int{1, 1}
	}
	mxx := (w + 8*hv[0][0] - 1) / (8 * hv[0][0])
	myy := (h + 8*hv[0][1] - 1) / (8 * hv[0][1])
	coef := make([][][64]int32, nComp)
	style := rng.IntN(4)
	for c := range nComp {
		coef[c] = make([][64]int32, mxx*myy*hv[c][0]*hv[c][1])
		for i := range coef[c] {
			b := &coef[c][i]
			b[0] = rng.Int32N(2001) - 1000
			switch (style + rng.IntN(2)) % 4 {
			case 0:
			case 1:
				for range rng.IntN(6) {
					b[1+rng.IntN(63)] = rng.Int32N(7) - 3
				}
			case 2:
				for k := 1; k < 64; k++ {
					if rng.IntN(3) == 0 {
						b[k] = rng.Int32N(1<<(1+rng.IntN(10))) - rng.Int32N(1<<rng.IntN(10))
					}
				}
			case 3:
				for k := 1; k < 64; k++ {
					b[k] = rng.Int32N(201) - 100
				}
			}
		}
	}

	out := []byte{0xff, jpegSOI}
	if rng.IntN(2) == 0 {
		out = append(out, segment(jpegAPP0, []byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"))...)
	}
	var dqt []byte
	for t := range 4 {
		if rng.IntN(3) == 0 {
			dqt = append(dqt, 1<<4|byte(t))
			for range 64 {
				v := 1 + rng.IntN(2000)
				dqt = append(dqt, byte(v>>8), byte(v))
			}
		} else {
			dqt = append(dqt, byte(t))
			for range 64 {
				dqt = append(dqt, byte(1+rng.IntN(255)))
			}
		}
	}
	dqtSeg := segment(jpegDQT, dqt)
	dqtLate := rng.IntN(4) == 0 // after the scans: the tables that count are the last
	if !dqtLate {
		out = append(out, dqtSeg...)
	}
	sof := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(nComp)}
	for i := range nComp {
		sof = append(sof, byte(1+i), byte(fhv[i][0]<<4|fhv[i][1]), byte(rng.IntN(4)))
	}
	out = append(out, segment(jpegSOF2, sof)...)

	dcSyms := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	var acSyms []byte
	for i := range 256 {
		acSyms = append(acSyms, byte(i))
	}

	type scanT struct {
		comps          []int
		ss, se, ah, al int
	}
	var script []scanT
	adc := rng.IntN(3)
	all := []int{0, 1, 2}[:nComp]
	if rng.IntN(2) == 0 || nComp == 1 {
		script = append(script, scanT{all, 0, 0, 0, adc})
	} else {
		for c := range nComp {
			script = append(script, scanT{[]int{c}, 0, 0, 0, adc})
		}
	}
	var acScans [][]scanT
	for c := range nComp {
		if rng.IntN(6) == 0 {
			continue // no AC for this component
		}
		cuts := []int{1}
		for range rng.IntN(3) {
			cuts = append(cuts, 2+rng.IntN(61))
		}
		slices.Sort(cuts)
		cuts = append(cuts, 64)
		for i := 0; i+1 < len(cuts); i++ {
			if cuts[i] == cuts[i+1] {
				continue
			}
			al := rng.IntN(4)
			var seq []scanT
			seq = append(seq, scanT{[]int{c}, cuts[i], cuts[i+1] - 1, 0, al})
			for a := al - 1; a >= 0; a-- {
				seq = append(seq, scanT{[]int{c}, cuts[i], cuts[i+1] - 1, a + 1, a})
			}
			acScans = append(acScans, seq)
		}
	}
	// The AC sequences interleaved at random, each kept in order.
	for {
		var live []int
		for i, s := range acScans {
			if len(s) > 0 {
				live = append(live, i)
			}
		}
		if len(live) == 0 {
			break
		}
		if rng.IntN(4) == 0 && adc > 0 {
			adc--
			script = append(script, scanT{all, 0, 0, adc + 1, adc})
			continue
		}
		i := live[rng.IntN(len(live))]
		script = append(script, acScans[i][0])
		acScans[i] = acScans[i][1:]
	}
	for adc > 0 {
		adc--
		script = append(script, scanT{all, 0, 0, adc + 1, adc})
	}

	for _, sc := range script {
		dcT, acT := randomHuffman(rng, dcSyms), randomHuffman(rng, acSyms)
		td, ta := rng.IntN(4), rng.IntN(4)
		var dht []byte
		dht = append(append(append(dht, byte(0<<4|td)), dcT.counts[:]...), dcT.vals...)
		dht = append(append(append(dht, byte(1<<4|ta)), acT.counts[:]...), acT.vals...)
		out = append(out, segment(jpegDHT, dht)...)
		sos := []byte{byte(len(sc.comps))}
		for _, c := range sc.comps {
			sos = append(sos, byte(1+c), byte(td<<4|ta))
		}
		sos = append(sos, byte(sc.ss), byte(sc.se), byte(sc.ah<<4|sc.al))
		out = append(out, segment(jpegSOS, sos)...)

		e := &progEnc{w: &testBits{}, ac: acT}
		var last [3]int32
		visit := func(c int, b *[64]int32) {
			switch {
			case sc.ss == 0 && sc.ah == 0:
				v := b[0] >> sc.al
				diff := v - last[c]
				last[c] = v
				size, bb := category(diff)
				e.emit(dcT, byte(size))
				e.w.put(bb, size)
			case sc.ss == 0:
				e.w.put(uint32(b[0]>>sc.al)&1, 1)
			case sc.ah == 0:
				e.acFirst(b, sc.ss, sc.se, uint(sc.al))
			default:
				e.acRefine(b, sc.ss, sc.se, uint(sc.al))
			}
		}
		if len(sc.comps) == 1 {
			c := sc.comps[0]
			q := mxx * hv[c][0]
			for n := range mxx * myy * hv[c][0] * hv[c][1] {
				bx, by := n%q, n/q
				if bx*8 >= w || by*8 >= h {
					continue
				}
				visit(c, &coef[c][by*q+bx])
			}
		} else {
			for my := range myy {
				for mx := range mxx {
					for _, c := range sc.comps {
						for j := range hv[c][0] * hv[c][1] {
							bx, by := hv[c][0]*mx+j%hv[c][0], hv[c][1]*my+j/hv[c][0]
							visit(c, &coef[c][by*mxx*hv[c][0]+bx])
						}
					}
				}
			}
		}
		e.emitEOB()
		e.w.flush()
		out = append(out, e.w.out...)
		if rng.IntN(5) == 0 {
			out = append(out, segment(jpegCOM, []byte("between scans"))...)
		}
	}
	if dqtLate {
		out = append(out, dqtSeg...)
	}
	return append(out, 0xff, jpegEOI)
}
