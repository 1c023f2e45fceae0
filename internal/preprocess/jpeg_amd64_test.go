//go:build !purego

package preprocess

import (
	"math/rand/v2"
	"testing"
)

// acRunBMI2 is acRun to the bit: the same coefficients stored, the same
// index, bits and position returned, over random AC tables (paired or
// not), quantisation, data with 0xff bytes in it, and states, n = 64
// among them.
func TestACRunMatchesGo(t *testing.T) {
	if !haveBMI2 {
		t.Skip("no BMI2")
	}
	rng := rand.New(rand.NewPCG(41, 42))
	var all []byte
	for r := range 16 {
		for s := 1; s <= 10; s++ {
			all = append(all, byte(r<<4|s))
		}
	}
	all = append(all, 0x00, 0xf0) // end of block, sixteen zeros
	for i := range 300 {
		rng.Shuffle(len(all), func(a, b int) { all[a], all[b] = all[b], all[a] })
		th := randomHuffman(rng, all[:2+rng.IntN(len(all)-1)])
		var h jpegHuffman
		if !h.build(th.counts[:], th.vals) {
			t.Fatalf("table %d: not built", i)
		}
		var lut jpegACLUT
		h.lookup(&lut, rng.IntN(2) == 0)
		var qz [64]uint64
		for j := range qz {
			qz[j] = uint64(uint32(rng.Int32N(1<<16)-1<<15)) | uint64(jpegZig[j])<<32
		}
		data := make([]byte, rng.IntN(300))
		for j := range data {
			data[j] = byte(rng.IntN(256))
		}
		for range 50 {
			pos := rng.IntN(len(data) + 1)
			ff := pos
			for ff < len(data) && data[ff] != 0xff {
				ff++
			}
			limit := ff - 8
			if rng.IntN(8) == 0 {
				limit = -1 // past a marker
			}
			k, n, acc := 1+rng.IntN(63), uint(rng.IntN(65)), rng.Uint64()
			var got, want [64]int32
			gk, gacc, gn, gpos := acRunFast(&got, &qz, &lut, data, limit, k, acc, n, pos)
			wk, wacc, wn, wpos := acRun(&want, &qz, &lut, data, limit, k, acc, n, pos)
			if gk != wk || gacc != wacc || gn != wn || gpos != wpos || got != want {
				t.Fatalf("table %d, k %d, n %d, pos %d of %d, limit %d: got k %d acc %x n %d pos %d, acRun k %d acc %x n %d pos %d; blocks equal: %v",
					i, k, n, pos, len(data), limit, gk, gacc, gn, gpos, wk, wacc, wn, wpos, got == want)
			}
		}
	}
}

// The decoder's results are the same with acRun, which CPUs without BMI2
// take.
func TestDecodeJPEGWithoutBMI2(t *testing.T) {
	if !haveBMI2 {
		t.Skip("no BMI2: the other tests run acRun")
	}
	haveBMI2 = false
	defer func() { haveBMI2 = true }()
	t.Run("MatchesImageJPEG", TestDecodeJPEGMatchesImageJPEG)
	t.Run("Generated", TestDecodeJPEGGenerated)
}
