package knn

import (
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
	got, err := s.TopK(q, m, p, ids, d, k)
	if err != nil {
		t.Fatal(err)
	}
	want := bruteForce(q, m, p, ids, d, k)
	for i := range want {
		var gotIDs []int64
		for _, nb := range got[i] {
			gotIDs = append(gotIDs, nb.ID)
			if nb.ID != ids[nb.Index] {
				t.Fatalf("query %d: Index %d does not hold id %d", i, nb.Index, nb.ID)
			}
		}
		if !slices.Equal(gotIDs, want[i]) {
			t.Errorf("query %d: got %v, want %v", i, gotIDs, want[i])
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
