package knn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"dcd/internal/ortrun"
)

func newSearcher(t testing.TB) *Searcher {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	s, err := NewSearcher(ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func randVecs(rng *rand.Rand, n, d int) []float32 {
	v := make([]float32, n*d)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// bruteForce is the reference: every pair, exact squared distance in float64.
func bruteForce(q []float32, m int, p []float32, ids []int64, d, k int) [][]int64 {
	out := make([][]int64, m)
	for i := 0; i < m; i++ {
		type cand struct {
			d  float64
			id int64
		}
		var cs []cand
		for j := range ids {
			var s float64
			for x := 0; x < d; x++ {
				diff := float64(q[i*d+x]) - float64(p[j*d+x])
				s += diff * diff
			}
			cs = append(cs, cand{s, ids[j]})
		}
		slices.SortFunc(cs, func(a, b cand) int {
			if a.d != b.d {
				if a.d < b.d {
					return -1
				}
				return 1
			}
			return int(a.id - b.id)
		})
		for _, c := range cs[:min(k, len(cs))] {
			out[i] = append(out[i], c.id)
		}
	}
	return out
}

func TestTopKMatchesBruteForce(t *testing.T) {
	s := newSearcher(t)
	s.Block = 97 // several blocks, the last one ragged
	rng := rand.New(rand.NewPCG(1, 2))
	const m, n, d, k = 13, 1000, 24, 7
	q, p := randVecs(rng, m, d), randVecs(rng, n, d)
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(1000 + 3*i)
	}
	want := bruteForce(q, m, p, ids, d, k)
	// All queries at once, and in groups of 5, 5 and 3 (groupQueries).
	defer func(g int) { groupQueries = g }(groupQueries)
	for _, group := range []int{groupQueries, 5} {
		groupQueries = group
		got, err := s.TopK(q, m, p, ids, d, k)
		if err != nil {
			t.Fatal(err)
		}
		checkIDs(t, fmt.Sprintf("groups of %d", group), got, want, ids)
	}
}

// checkIDs fails unless each query's neighbours are the ids want gives,
// in order, and each one's Index holds its id.
func checkIDs(t *testing.T, what string, got [][]Neighbor, want [][]int64, ids []int64) {
	t.Helper()
	for i := range want {
		var gotIDs []int64
		for _, nb := range got[i] {
			gotIDs = append(gotIDs, nb.ID)
			if nb.ID != ids[nb.Index] {
				t.Fatalf("%s: query %d: Index %d does not hold id %d", what, i, nb.Index, nb.ID)
			}
		}
		if !slices.Equal(gotIDs, want[i]) {
			t.Errorf("%s: query %d: got %v, want %v", what, i, gotIDs, want[i])
		}
	}
}

func TestTopKTiesBrokenByID(t *testing.T) {
	s := newSearcher(t)
	// Four identical pool vectors: all at the same distance from the query,
	// so only the ids can order them.
	d := 4
	pool := make([]float32, 4*d)
	for i := range pool {
		pool[i] = 1
	}
	got, err := s.TopK(make([]float32, d), 1, pool, []int64{40, 10, 30, 20}, d, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got[0][0].ID != 10 || got[0][1].ID != 20 {
		t.Fatalf("got %+v, want ids 10 then 20", got[0])
	}
}

// Merge is the reference fold of MergeSorted: the k first of several
// candidate lists for one query sorted together, nearest first, ties by
// id; a neighbour listed twice (the same id next to itself in that order:
// at the same distance) counts once, as in MergeSorted.
func Merge(k int, lists ...[]Neighbor) []Neighbor {
	var all []Neighbor
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.SortFunc(all, Compare)
	all = slices.CompactFunc(all, func(a, b Neighbor) bool { return a.ID == b.ID })
	if len(all) > k {
		all = all[:k]
	}
	return all
}

func TestMergeDedupes(t *testing.T) {
	a := []Neighbor{{ID: 1, Distance: 1}, {ID: 2, Distance: 3}}
	b := []Neighbor{{ID: 2, Distance: 3}, {ID: 3, Distance: 2}}
	got := Merge(3, a, b)
	var ids []int64
	for _, n := range got {
		ids = append(ids, n.ID)
	}
	if !slices.Equal(ids, []int64{1, 3, 2}) {
		t.Fatalf("got %v", ids)
	}
}

// bruteForceF32 is the reference for integer-valued vectors, whose squared
// distances are small integers that float32 holds exactly: every pair, ties
// by id, so it must agree with TopK to the last id.
func TestTopKMatchesBruteForceWithTies(t *testing.T) {
	s := newSearcher(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct{ m, n, d, k, block int }{
		{7, 500, 8, 5, 64},
		{5, 300, 3, 40, 0}, // many equal distances, k past several ties
		{3, 20, 4, 50, 7},  // k beyond the pool
		{64, 2000, 16, 10, 333},
	} {
		s.Block = tc.block
		q, p := intVecs(rng, tc.m, tc.d), intVecs(rng, tc.n, tc.d)
		ids := rng.Perm(tc.n)
		ids64 := make([]int64, tc.n)
		for i, id := range ids {
			ids64[i] = int64(id)
		}
		got, err := s.TopK(q, tc.m, p, ids64, tc.d, tc.k)
		if err != nil {
			t.Fatal(err)
		}
		checkIDs(t, fmt.Sprintf("%+v", tc), got, bruteForce(q, tc.m, p, ids64, tc.d, tc.k), ids64)
	}
}

// TestTopKConcurrent runs searches of different shapes at once, as a
// worker searching several pool shards does: each must get the brute-force
// answer, whatever the others do to the shared session and buffers.
func TestTopKConcurrent(t *testing.T) {
	s := newSearcher(t)
	s.Block = 50 // several blocks each, so selections and products interleave
	type search struct {
		q, p       []float32
		ids        []int64
		m, n, d, k int
	}
	rng := rand.New(rand.NewPCG(7, 8))
	var searches []search
	for i := range 6 {
		m, n, d, k := 5+i, 300+37*i, 4+i, 3+i
		ids := make([]int64, n)
		for j := range ids {
			ids[j] = int64(j*7 + i)
		}
		searches = append(searches, search{intVecs(rng, m, d), intVecs(rng, n, d), ids, m, n, d, k})
	}
	errs := make(chan error, len(searches))
	for _, c := range searches {
		go func() {
			for range 5 {
				got, err := s.TopK(c.q, c.m, c.p, c.ids, c.d, c.k)
				if err != nil {
					errs <- err
					return
				}
				want := bruteForce(c.q, c.m, c.p, c.ids, c.d, c.k)
				for i := range want {
					var gotIDs []int64
					for _, nb := range got[i] {
						gotIDs = append(gotIDs, nb.ID)
					}
					if !slices.Equal(gotIDs, want[i]) {
						errs <- fmt.Errorf("%d×%d, d %d: query %d: got %v, want %v", c.m, c.n, c.d, i, gotIDs, want[i])
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range searches {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func intVecs(rng *rand.Rand, n, d int) []float32 {
	v := make([]float32, n*d)
	for i := range v {
		v[i] = float32(rng.IntN(5) - 2)
	}
	return v
}

func TestMergeSortedEqualsSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	id := func(n Neighbor) Neighbor { return n }
	for trial := 0; trial < 2000; trial++ {
		k := 1 + rng.IntN(8)
		mk := func() []Neighbor {
			l := make([]Neighbor, rng.IntN(12))
			for i := range l {
				l[i] = Neighbor{ID: int64(rng.IntN(10)), Distance: float32(rng.IntN(4))}
			}
			slices.SortFunc(l, Compare)
			return slices.CompactFunc(l, func(a, b Neighbor) bool { return a.ID == b.ID })
		}
		a, b := mk(), mk()
		if len(a) > k {
			a = a[:k]
		}
		got := MergeSorted(nil, a, b, k, id)
		want := Merge(k, a, b)
		if !slices.Equal(got, want) {
			t.Fatalf("k=%d a=%v b=%v: got %v, want %v", k, a, b, got, want)
		}
	}
}

// exactCut is the largest float32 score c with max(c+qq, 0) ≤ thr, found by
// bisecting over the float32 values in order.
func exactCut(thr, qq float32) float32 {
	key := func(f float32) uint32 {
		b := math.Float32bits(f)
		if b>>31 != 0 {
			return ^b
		}
		return b | 1<<31
	}
	val := func(u uint32) float32 {
		if u>>31 != 0 {
			return math.Float32frombits(u &^ (1 << 31))
		}
		return math.Float32frombits(^u)
	}
	lo, hi := key(float32(math.Inf(-1))), key(float32(math.Inf(1)))
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if max(float32(val(mid)+qq), 0) <= thr {
			lo = mid
		} else {
			hi = mid
		}
	}
	return val(lo)
}

// scoreCut may pass a few scores too many, never one too few.
// A pool row whose norm overflows to +Inf fills the heap at +Inf; the rows
// after it, nearer, still enter. And a query whose norm overflows ranks
// every row at +Inf, by id.
func TestTopKInfiniteNorms(t *testing.T) {
	s := newSearcher(t)
	got, err := s.TopK([]float32{1, 0}, 1, []float32{1e20, 0, 1, 0}, []int64{0, 1}, 2, 1)
	if err != nil || len(got[0]) != 1 || got[0][0].ID != 1 || got[0][0].Distance != 0 {
		t.Errorf("pool (1e20, 0), (1, 0) from (1, 0): %+v, %v; want id 1 at 0", got, err)
	}
	pool := make([]float32, 2*20000)
	ids := make([]int64, 20000)
	for i := range ids {
		pool[2*i], ids[i] = float32(i), int64(20000-i)
	}
	got, err = s.TopK([]float32{2e19, 0}, 1, pool, ids, 2, 3)
	if err != nil || len(got[0]) != 3 || got[0][0].ID != 1 || got[0][1].ID != 2 || got[0][2].ID != 3 {
		t.Errorf("a query whose norm overflows: %+v, %v; want ids 1, 2, 3 (all at +Inf)", got, err)
	}
	// A row whose product overflows to -Inf beside a query norm at +Inf:
	// +Inf too, not NaN (which would rank nearest), and ties by id.
	got, err = s.TopK([]float32{1e30, 0}, 1, []float32{1e10, 0, 0, 0}, []int64{0, 1}, 2, 2)
	if err != nil || len(got[0]) != 2 || got[0][0].ID != 0 || got[0][1].ID != 1 || !math.IsInf(float64(got[0][0].Distance), 1) || !math.IsInf(float64(got[0][1].Distance), 1) {
		t.Errorf("an overflowing product: %+v, %v; want ids 0 and 1, both at +Inf", got, err)
	}
}

func TestScoreCut(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	cases := [][2]float32{{0, 0}, {5, 3}, {3, 3}, {0, 20}, {1e-30, 1e8}, {4, 0}, {1e-40, 0}, {0, 1e-40}}
	for range 20000 {
		thr, qq := float32(rng.ExpFloat64()*math.Pow(10, float64(rng.IntN(12)-6))), float32(rng.ExpFloat64()*math.Pow(10, float64(rng.IntN(12)-6)))
		cases = append(cases, [2]float32{thr, qq})
	}
	for _, c := range cases {
		thr, qq := c[0], c[1]
		cut, exact := scoreCut(thr, qq), exactCut(thr, qq)
		if cut < exact {
			t.Fatalf("scoreCut(%v, %v) = %v, below the exact cut %v", thr, qq, cut, exact)
		}
		// At most a few ulps (at the largest magnitude involved) above.
		m := max(thr, qq, abs32(thr-qq))
		if ulp := math.Nextafter32(m, float32(math.Inf(1))) - m; float64(cut)-float64(exact) > 8*float64(ulp) {
			t.Fatalf("scoreCut(%v, %v) = %v, far above the exact cut %v", thr, qq, cut, exact)
		}
	}
}

// BenchmarkSelect times the selection alone: one block of scores, every
// query's k best, as a pool shard of 2,000 rows searched for 1,000 queries.
func BenchmarkSelect(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 9))
	const m, n, k = 1000, 2000, 10
	scores, norms := randVecs(rng, m, n), randVecs(rng, 1, n)
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i)
	}
	b.SetBytes(m * n * 4)
	for range b.N {
		for q := range m {
			s := newSelector(k, 100, make([]Neighbor, k))
			s.scan(scores[q*n:(q+1)*n], norms, 0, ids)
			s.result()
		}
	}
}

// BenchmarkTopKShards times searches of pool shards four at a time, as a
// worker runs them; the products take turns, and the selections run
// beside them.
func BenchmarkTopKShards(b *testing.B) {
	s := newSearcher(b)
	rng := rand.New(rand.NewPCG(1, 2))
	const m, n, d, k, shards = 1000, 2000, 384, 10, 4
	q := randVecs(rng, m, d)
	pools := make([][]float32, shards)
	for i := range pools {
		pools[i] = randVecs(rng, n, d)
	}
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i)
	}
	b.SetBytes(2 * m * n * d * shards) // "MB/s" reads as MFLOP/s
	for range b.N {
		errs := make(chan error, shards)
		for _, p := range pools {
			go func() {
				_, err := s.TopK(q, m, p, ids, d, k)
				errs <- err
			}()
		}
		for range shards {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkTopK times a search of one pool shard.
func BenchmarkTopK(b *testing.B) {
	s := newSearcher(b)
	rng := rand.New(rand.NewPCG(1, 2))
	const m, n, d, k = 1000, 2000, 384, 10
	q, p := randVecs(rng, m, d), randVecs(rng, n, d)
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i)
	}
	b.SetBytes(2 * m * n * d) // "MB/s" reads as MFLOP/s
	for range b.N {
		if _, err := s.TopK(q, m, p, ids, d, k); err != nil {
			b.Fatal(err)
		}
	}
}

func TestKthSmallest(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for n := 1; n < 70; n++ {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.IntN(max(n/3, 1))) // many equal values
		}
		sorted := slices.Sorted(slices.Values(v))
		for k := 1; k <= n; k++ {
			w := slices.Clone(v)
			if got := kthSmallest(w, k); got != sorted[k-1] {
				t.Fatalf("%v: %d-th smallest = %v, want %v", v, k, got, sorted[k-1])
			}
		}
	}
}

// TestMinScoreMatchesGeneric checks the vector minimum against the Go one
// on every length and alignment up to a few vectors.
func TestMinScoreMatchesGeneric(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	products, norms := randVecs(rng, 1, 100), randVecs(rng, 1, 100)
	for lo := 0; lo < 8; lo++ {
		for hi := lo; hi <= len(products); hi++ {
			if got, want := minScore(products[lo:hi], norms[lo:hi]), minGeneric(products[lo:hi], norms[lo:hi]); got != want {
				t.Fatalf("rows [%d,%d): minScore = %v, want %v", lo, hi, got, want)
			}
		}
	}
}

// TestSkipMatchesGeneric checks the vector skip against the Go one on
// every length up to a few wide steps, every start alignment, cuts that
// let none, some and every row through, and NaN scores (never ≤ cut).
func TestSkipMatchesGeneric(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	products, norms := randVecs(rng, 1, 160), randVecs(rng, 1, 160)
	products[77] = float32(math.NaN())
	for _, cut := range []float32{float32(math.Inf(-1)), -4, -2.5, -1, 0, 2, float32(math.Inf(1))} {
		for lo := 0; lo < 8; lo++ {
			for hi := lo; hi <= len(products); hi++ {
				p, n := products[lo:hi], norms[lo:hi]
				want := skipGeneric(p, n, cut)
				if got := skip(p, n, cut); got != want {
					t.Fatalf("cut %v, rows [%d,%d): skip = %d, want %d", cut, lo, hi, got, want)
				}
				if want%8 != 0 || want > len(p) {
					t.Fatalf("cut %v, rows [%d,%d): skip = %d, not a group's offset", cut, lo, hi, want)
				}
			}
		}
	}
}

// TestSumSquaresMatchesGo checks the vector ‖v‖² against one summed in
// float64, on every length and alignment up to a few wide steps, and that
// a NaN or an Inf in the row comes through.
func TestSumSquaresMatchesGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	v := randVecs(rng, 1, 140)
	for lo := 0; lo < 8; lo++ {
		for hi := lo; hi <= len(v); hi++ {
			var want float64
			for _, x := range v[lo:hi] {
				want += float64(x) * float64(x)
			}
			if got := sumSquares(v[lo:hi]); math.Abs(float64(got)-want) > 1e-5*want {
				t.Fatalf("[%d,%d): sumSquares = %v, want %v", lo, hi, got, want)
			}
		}
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		w := slices.Clone(v)
		w[100] = bad
		if got := sumSquares(w); !math.IsNaN(float64(got)) && !math.IsInf(float64(got), 1) {
			t.Errorf("a row holding %v: sumSquares = %v", bad, got)
		}
	}
}
