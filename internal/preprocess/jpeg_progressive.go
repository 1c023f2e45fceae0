package preprocess

import "math/bits"

// Progressive JPEGs (G.1.2), which much of the web serves: the image's
// coefficients arrive over several scans, each a band of frequencies
// (spectral selection) or one more bit of them (successive approximation),
// and are transformed once the last has come. The scans are read as
// image/jpeg's processSOS, refine and refineNonZeroes read them,
// statement for statement, so that the coefficients are the same,
// malformed input included; a scan with restart markers declines.

// progressiveScan decodes one scan of a progressive image, whose SOS
// segment is seg and whose entropy-coded data starts at *pos in data,
// into d.coef; *pos is left at the marker that follows.
func (d *jpegDecoder) progressiveScan(seg, data []byte, pos *int, reuse bool) bool {
	order, rest, ok := d.scanHeader(seg)
	if !ok || d.ri > 0 {
		return false
	}
	zigStart, zigEnd := int(rest[0]), int(rest[1])
	ah, al := uint(rest[2]>>4), uint(rest[2]&0x0f)
	if zigStart == 0 && zigEnd != 0 || zigStart > zigEnd || zigEnd > 63 ||
		zigStart != 0 && len(order) != 1 || ah != 0 && ah != al+1 {
		return false
	}
	for _, ci := range order {
		c := &d.comp[ci]
		c.dc = 0
		dcFirst := zigStart == 0 && ah == 0
		if dcFirst && !d.defined[0][c.td] || zigStart > 0 && !d.defined[1][c.ta] {
			return false
		}
		if d.coef[ci] == nil {
			d.coef[ci], d.nz[ci] = d.coefBlocks(ci)
		}
	}
	d.makeImage(reuse)

	d.bits = jpegBits{data: data, pos: *pos}
	blockCount := 0
	for my := range d.myy {
		for mx := range d.mxx {
			for _, ci := range order {
				c := &d.comp[ci]
				for j := range c.h * c.v {
					// An interleaved scan visits an MCU's blocks; one of
					// a single component visits its blocks in rows, only
					// those inside the image (A.2), as image/jpeg reckons.
					var bx, by int
					if len(order) != 1 {
						bx, by = c.h*mx+j%c.h, c.v*my+j/c.h
					} else {
						q := d.mxx * c.h
						bx, by = blockCount%q, blockCount/q
						blockCount++
						if bx*8 >= d.width || by*8 >= d.height {
							continue
						}
					}
					k := by*d.mxx*c.h + bx
					b, nz := &d.coef[ci][k], &d.nz[ci][k]
					if ah != 0 {
						ok = d.refine(b, nz, &d.tables.huff[1][c.ta], zigStart, zigEnd, 1<<al)
					} else {
						ok = d.firstBits(b, nz, c, zigStart, zigEnd, al)
					}
					if !ok || d.bits.n < d.bits.fake {
						return false
					}
				}
			}
		}
	}
	*pos, ok = d.bits.end()
	return ok
}

// coefBlocks returns component ci's blocks, zeroed, and their non-zero
// masks, cut from d's buffers (which the pool keeps) at the component's
// place in them.
func (d *jpegDecoder) coefBlocks(ci int) ([][64]int32, []uint64) {
	var off, n, total int
	for i := range d.nComp {
		size := d.mxx * d.myy * d.comp[i].h * d.comp[i].v
		if i < ci {
			off += size
		} else if i == ci {
			n = size
		}
		total += size
	}
	d.coefBuf = grow(d.coefBuf, total)
	d.nzBuf = grow(d.nzBuf, total)
	b, nz := d.coefBuf[off:off+n:off+n], d.nzBuf[off:off+n:off+n]
	clear(b)
	clear(nz)
	return b, nz
}

// firstBits decodes a block's first scan of a band (G.1.2.1 and G.1.2.2):
// its DC difference when the band starts at 0, then an end-of-band run or
// the band's coefficients, each shifted left by al.
func (d *jpegDecoder) firstBits(b *[64]int32, nz *uint64, c *jpegComponent, zigStart, zigEnd int, al uint) bool {
	bits := &d.bits
	zig := zigStart
	if zig == 0 {
		zig++
		t, ok := bits.decode(&d.tables.huff[0][c.td])
		if !ok || t > 16 {
			return false
		}
		c.dc += bits.receiveExtend(t)
		b[0] = c.dc << al
	}
	if zig <= zigEnd && d.eobRun > 0 {
		d.eobRun--
		return true
	}
	h := &d.tables.huff[1][c.ta]
	for ; zig <= zigEnd; zig++ {
		rs, ok := bits.decode(h)
		if !ok {
			return false
		}
		r, s := int(rs>>4), rs&0x0f
		if s != 0 {
			if zig += r; zig > zigEnd {
				break
			}
			b[jpegZig[zig]] = bits.receiveExtend(s) << al // never 0: |v| < 2^15, al < 16
			*nz |= 1 << zig
			continue
		}
		if r != 15 {
			d.eobRun = bits.endOfBands(r) - 1 // this block's is done
			break
		}
		zig += 15
	}
	return true
}

// refine decodes one more bit of a block's band (G.1.2.3), as image/jpeg's
// refine does: delta is the bit's value.
func (d *jpegDecoder) refine(b *[64]int32, nz *uint64, h *jpegHuffman, zigStart, zigEnd int, delta int32) bool {
	bits := &d.bits
	if zigStart == 0 { // the DC: one bit
		if bits.take(1) != 0 {
			b[0] |= delta
		}
		return true
	}
	zig := zigStart
	if d.eobRun == 0 {
	loop:
		for ; zig <= zigEnd; zig++ {
			z := int32(0)
			rs, ok := bits.decode(h)
			if !ok {
				return false
			}
			r, s := int(rs>>4), rs&0x0f
			switch s {
			case 0:
				if r != 15 {
					d.eobRun = bits.endOfBands(r)
					break loop
				}
			case 1:
				z = delta
				if bits.take(1) == 0 {
					z = -z
				}
			default:
				return false
			}
			if zig = d.refineNonZeroes(b, *nz, zig, zigEnd, r, delta); zig > zigEnd {
				return false
			}
			if z != 0 {
				b[jpegZig[zig]] = z
				*nz |= 1 << zig
			}
		}
	}
	if d.eobRun > 0 {
		d.eobRun--
		d.refineNonZeroes(b, *nz, zig, zigEnd, -1, delta)
	}
	return true
}

// refineNonZeroes gives each non-zero coefficient of b from zig on one
// more bit, skipping nz zero ones first (all when nz < 0), and returns
// where it stopped, as image/jpeg's does. Most of a progressive file's
// time goes here: it steps from one non-zero coefficient to the next by
// the block's mask (a coefficient refined stays non-zero: its bit moves
// it away from zero), the bit reader lives in locals, and the bit is
// added without a branch, towards the coefficient's sign, when it is 1.
func (d *jpegDecoder) refineNonZeroes(b *[64]int32, mask uint64, zig, zigEnd, nz int, delta int32) int {
	br := &d.bits
	acc, n := br.acc, br.n
	mask &= ^uint64(0) >> (63 - zigEnd) // the band's, up to zigEnd
	for zig <= zigEnd {
		next := zigEnd + 1 // the next non-zero coefficient
		if m := mask >> zig << zig; m != 0 {
			next = bits.TrailingZeros64(m)
		}
		if zeros := next - zig; nz >= 0 {
			if nz < zeros {
				zig += nz // the zero where image/jpeg's count runs out
				break
			}
			nz -= zeros
		}
		if zig = next; zig > zigEnd {
			break
		}
		if n < 32 {
			br.acc, br.n = acc, n
			br.refill()
			acc, n = br.acc, br.n
		}
		bit := -int32(acc >> 63)
		acc <<= 1
		n--
		u := jpegZig[zig] & 63
		sign := b[u] >> 31
		b[u] += (delta ^ sign - sign) & bit
		zig++
	}
	br.acc, br.n = acc, n
	return zig
}

// endOfBands reads an end-of-band run of category r < 15 (G.1.2.2): how
// many blocks, this one included, have nothing more in the band.
func (b *jpegBits) endOfBands(r int) uint16 {
	run := uint16(1) << r
	if r != 0 {
		run |= uint16(b.take(uint(r)))
	}
	return run
}

// take reads n ≤ 16 bits.
func (b *jpegBits) take(n uint) uint32 {
	if b.n < 32 {
		b.refill()
	}
	v := uint32(b.acc >> (64 - n))
	b.acc <<= n
	b.n -= n
	return v
}

// reconstruct dequantises and transforms the blocks inside the image of
// each component that had a scan, as image/jpeg's
// reconstructProgressiveImage does, with the quantisation tables as they
// stand at the end.
func (d *jpegDecoder) reconstruct() bool {
	for i := range d.nComp {
		if d.coef[i] == nil {
			continue
		}
		c := &d.comp[i]
		if !d.quantDefined[c.tq] {
			return false
		}
		q := &d.quant[c.tq]
		v, h := 8*d.comp[0].v/c.v, 8*d.comp[0].h/c.h
		stride := d.mxx * c.h
		for by := 0; by*v < d.height; by++ {
			for bx := 0; bx*h < d.width; bx++ {
				b, nz := &d.coef[i][by*stride+bx], d.nz[i][by*stride+bx]
				// Only the non-zero coefficients: a zero one stays zero.
				// (A product that wraps to zero leaves ac set, and the
				// transform of a block of its DC alone is jpegFlat's.)
				ac := nz&^1 != 0
				for m := nz &^ 1; m != 0; m &= m - 1 {
					zig := bits.TrailingZeros64(m)
					b[jpegZig[zig]&63] *= q[zig&63]
				}
				b[0] *= q[0]
				dst := d.out[i][8*(by*d.strides[i]+bx):]
				if ac {
					jpegIDCTStore(dst, d.strides[i], b)
				} else {
					jpegFlat(dst, d.strides[i], b[0])
				}
			}
		}
	}
	return true
}
