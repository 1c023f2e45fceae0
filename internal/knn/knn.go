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
		// Ask for one more than k when the block allows, so a tie at the
		// k-th place is seen and broken by id rather than by ORT's order.
		kb := min(k+1, end-start)
		out, err := s.sess.Run(
			ortrun.Tensor{Shape: []int64{int64(m), int64(d)}, Floats: queries},
			ortrun.Tensor{Shape: []int64{int64(end - start), int64(d)}, Floats: pool[start*d : end*d]},
			ortrun.Tensor{Shape: []int64{1}, Ints: []int64{int64(kb)}},
		)
		if err != nil {
			return nil, err
		}
		dist, idx := out[0].Floats, out[1].Ints
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
