// Package knn finds, for each query vector, its k nearest pool vectors by
// squared l2 distance.
//
// The scan is 2·queries·pool·d flops, so it runs as a matrix product on ONNX
// Runtime's optimised kernels (MLAS) through a small graph this package
// builds: ‖q‖² − 2·q·pᵀ + ‖p‖², then TopK. Go code only merges the per-block
// candidates, which is k·queries work per block, and breaks ties by pool id
// so the result is deterministic.
package knn

import (
	"cmp"
	"fmt"
	"slices"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

// Neighbor is one pool vector near a query.
type Neighbor struct {
	ID       int64   // pool id, the tie-breaker
	Index    int     // row within the pool slice given to TopK
	Distance float32 // squared l2
}

// Less orders neighbours nearest first, then by pool id.
func Less(a, b Neighbor) bool {
	if a.Distance != b.Distance {
		return a.Distance < b.Distance
	}
	return a.ID < b.ID
}

func compare(a, b Neighbor) int {
	if c := cmp.Compare(a.Distance, b.Distance); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// Graph returns the distance+top-k ONNX graph: inputs "queries" [M,d],
// "pool" [N,d], "k" [1] int64; outputs "distances" [M,k], "indices" [M,k].
func Graph() *onnx.Graph {
	sym := func(names ...string) []string { return names }
	return &onnx.Graph{
		Name: "dcd_knn",
		Inputs: []onnx.Value{
			{Name: "queries", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "D")},
			{Name: "pool", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("N", "D")},
			{Name: "k", Elem: onnx.Int64, Shape: []int64{1}},
		},
		Outputs: []onnx.Value{
			{Name: "distances", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "K")},
			{Name: "indices", Elem: onnx.Int64, Shape: []int64{-1, -1}, DimNames: sym("M", "K")},
		},
		Nodes: []onnx.Node{
			{Op: "Gemm", Inputs: []string{"queries", "pool"}, Outputs: []string{"qp"}, Attrs: map[string]any{"transB": 1, "alpha": float32(-2)}},
			{Op: "ReduceSumSquare", Inputs: []string{"queries"}, Outputs: []string{"qq"}, Attrs: map[string]any{"axes": []int64{1}, "keepdims": 1}},
			{Op: "ReduceSumSquare", Inputs: []string{"pool"}, Outputs: []string{"pp"}, Attrs: map[string]any{"axes": []int64{1}, "keepdims": 1}},
			{Op: "Transpose", Inputs: []string{"pp"}, Outputs: []string{"ppT"}},
			{Op: "Add", Inputs: []string{"qp", "ppT"}, Outputs: []string{"d1"}},
			{Op: "Add", Inputs: []string{"d1", "qq"}, Outputs: []string{"d2"}},
			// Rounding in the expanded form can dip just below zero for
			// identical vectors; a distance is never negative.
			{Op: "Relu", Inputs: []string{"d2"}, Outputs: []string{"dist"}},
			{Op: "TopK", Inputs: []string{"dist", "k"}, Outputs: []string{"distances", "indices"}, Attrs: map[string]any{"axis": 1, "largest": 0, "sorted": 1}},
		},
	}
}

// Searcher runs the k-NN graph.
type Searcher struct {
	sess *ortrun.Session
	// Block is how many pool rows one graph run scans; it bounds the
	// distance matrix to queries×Block floats.
	Block int
}

// NewSearcher builds the graph and its ORT session.
func NewSearcher(opt ortrun.Options) (*Searcher, error) {
	model, err := Graph().Marshal()
	if err != nil {
		return nil, err
	}
	sess, err := ortrun.NewSession("knn", model, []string{"queries", "pool", "k"}, []string{"distances", "indices"}, opt)
	if err != nil {
		return nil, err
	}
	return &Searcher{sess: sess, Block: 16384}, nil
}

// Close releases the session.
func (s *Searcher) Close() error { return s.sess.Close() }

// TopK returns, for each of the m queries (row-major, d wide), its k nearest
// rows of pool (n rows, ids[i] the pool id of row i), nearest first with
// ties broken by id. Fewer than k come back when the pool is smaller.
func (s *Searcher) TopK(queries []float32, m int, pool []float32, ids []int64, d, k int) ([][]Neighbor, error) {
	n := len(ids)
	if len(queries) != m*d || len(pool) != n*d {
		return nil, fmt.Errorf("knn: shapes: %d query values for %d×%d, %d pool values for %d×%d", len(queries), m, d, len(pool), n, d)
	}
	best := make([][]Neighbor, m)
	block := s.Block
	if block < 1 {
		block = n
	}
	for start := 0; start < n; start += block {
		end := min(start+block, n)
		dist, idx, kb, err := s.scanBlock(queries, m, pool[start*d:end*d], end-start, d, k)
		if err != nil {
			return nil, err
		}
		for q := 0; q < m; q++ {
			for j := 0; j < kb; j++ {
				row := start + int(idx[q*kb+j])
				best[q] = append(best[q], Neighbor{ID: ids[row], Index: row, Distance: dist[q*kb+j]})
			}
			slices.SortFunc(best[q], compare)
			if len(best[q]) > k {
				best[q] = best[q][:k]
			}
		}
	}
	return best, nil
}

// scanBlock returns the kb nearest rows of one pool block per query, with kb
// ≥ k large enough that no query has a tie cut off at its k-th place: ORT's
// TopK orders ties arbitrarily, so when the row after the k-th is at the same
// distance, the block is scanned again for more until the tie is whole.
func (s *Searcher) scanBlock(queries []float32, m int, pool []float32, n, d, k int) ([]float32, []int64, int, error) {
	kb := min(k+1, n)
	for {
		out, err := s.sess.Run(
			ortrun.Tensor{Shape: []int64{int64(m), int64(d)}, Floats: queries},
			ortrun.Tensor{Shape: []int64{int64(n), int64(d)}, Floats: pool},
			ortrun.Tensor{Shape: []int64{1}, Ints: []int64{int64(kb)}},
		)
		if err != nil {
			return nil, nil, 0, err
		}
		dist, idx := out[0].Floats, out[1].Ints
		if kb == n || kb <= k || !tieAtCut(dist, m, kb, k) {
			return dist, idx, kb, nil
		}
		kb = min(2*kb, n)
	}
}

// tieAtCut reports whether any query's last returned distance equals its
// k-th, so rows beyond the cut may tie with the k-th.
func tieAtCut(dist []float32, m, kb, k int) bool {
	for q := 0; q < m; q++ {
		if dist[q*kb+kb-1] == dist[q*kb+k-1] {
			return true
		}
	}
	return false
}

// Merge keeps the k nearest of several candidate lists for one query,
// nearest first, ties by id; an id seen twice counts once.
func Merge(k int, lists ...[]Neighbor) []Neighbor {
	var all []Neighbor
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.SortFunc(all, compare)
	all = slices.CompactFunc(all, func(a, b Neighbor) bool { return a.ID == b.ID })
	if len(all) > k {
		all = all[:k]
	}
	return all
}
