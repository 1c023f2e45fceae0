package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"dcd/internal/knn"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

func initORT(lib string) error {
	if lib == "" {
		lib = ortrun.DefaultLibrary()
	}
	return ortrun.Init(lib)
}

// gemmGraph is the baseline of the k-NN scan: the bare product q·pᵀ on the
// same kernel (ORT's Gemm, MLAS) as the search graph.
func gemmGraph() *onnx.Graph {
	sym := func(names ...string) []string { return names }
	return &onnx.Graph{
		Name: "bench_gemm",
		Inputs: []onnx.Value{
			{Name: "a", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "D")},
			{Name: "b", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("N", "D")},
		},
		Outputs: []onnx.Value{{Name: "c", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "N")}},
		Nodes:   []onnx.Node{{Op: "Gemm", Inputs: []string{"a", "b"}, Outputs: []string{"c"}, Attrs: map[string]any{"transB": 1}}},
	}
}

// uniform fills n values in [-1, 1) from a fast seeded generator.
func uniform(seed uint64, n int) []float32 {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	v := make([]float32, n)
	for i := range v {
		v[i] = 2*rng.Float32() - 1
	}
	return v
}

// KNN measures knn.Searcher.TopK (queries × pool → k best) in GFLOP/s of
// its 2·m·n·d product, against the bare Gemm of the same shapes, block by
// block, written into a preallocated buffer.
func KNN(ctx context.Context, o Options) ([]Result, error) {
	m, n, k, reps := 1000, 100000, 50, 3
	if o.Quick {
		m, n, reps = 200, 20000, 3
	}
	s, err := knn.NewSearcher(ortrun.Options{Threads: o.searchThreads()})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	model, err := gemmGraph().Marshal()
	if err != nil {
		return nil, err
	}
	g, err := ortrun.NewSession("gemm", model, []string{"a", "b"}, []string{"c"}, ortrun.Options{Threads: o.searchThreads()})
	if err != nil {
		return nil, err
	}
	defer g.Close()

	var out []Result
	for _, d := range []int{384, 2048} {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		queries, pool := uniform(1, m*d), uniform(2, n*d)
		ids := make([]int64, n)
		for i := range ids {
			ids[i] = int64(i)
		}
		block := s.BlockFor(m, n, d)
		c := make([]float32, m*block)
		gemm := func() error {
			for start := 0; start < n; start += block {
				end := min(start+block, n)
				err := g.RunInto(
					[]ortrun.Tensor{{Shape: []int64{int64(m), int64(d)}, Floats: queries}, {Shape: []int64{int64(end - start), int64(d)}, Floats: pool[start*d : end*d]}},
					[]ortrun.Tensor{{Shape: []int64{int64(m), int64(end - start)}, Floats: c[:m*(end-start)]}})
				if err != nil {
					return err
				}
			}
			return nil
		}
		search := func() error {
			_, err := s.TopK(queries, m, pool, ids, d, k)
			return err
		}
		if err := search(); err != nil { // first use allocates the buffers
			return out, err
		}
		name := fmt.Sprintf("knn_topk_d%d", d)
		times, err := best(reps, labelled(name+"/gemm", gemm), labelled(name+"/search", search))
		if err != nil {
			return out, err
		}
		flop := 2 * float64(m) * float64(n) * float64(d)
		gf := func(t time.Duration) float64 { return flop / t.Seconds() / 1e9 }
		o.logf("knn d=%d: %d×%d, block %d: top-k %s, gemm %s", d, m, n, block, times[1], times[0])
		out = append(out, throughput(name, "GFLOP/s", gf(times[1]), gf(times[0]), 0.8))
	}
	return out, nil
}

// Merge measures folding partial top-k lists (one per pool shard, each
// holding k neighbours for every query) into each query's global k best,
// as activities.MergeTopK does, with knn.MergeSorted; the baseline (the
// "budget") is the sort-based fold it replaced (append, sort, dedupe, cut),
// timed over a tenth of the partials and scaled.
func Merge(ctx context.Context, o Options) ([]Result, error) {
	shards, queries, k := 10000, 1000, 50
	if o.Quick {
		shards, queries = 1000, 100
	}
	// Each shard's partial: for every query, k sorted distances from the
	// same distribution (a random start, then random gaps) and ids unique
	// to the shard. Making them is not timed.
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]knn.Neighbor, queries*k)
	makePartial := func(shard int) {
		for q := 0; q < queries; q++ {
			d := rng.Float32()
			for r := 0; r < k; r++ {
				buf[q*k+r] = knn.Neighbor{ID: int64(shard)<<20 | int64(q*k+r), Distance: d}
				d += rng.Float32() * 2 / float32(k)
			}
		}
	}
	id := func(n knn.Neighbor) knn.Neighbor { return n }
	linear := func(n int) time.Duration {
		best := make([][]knn.Neighbor, queries)
		var scratch []knn.Neighbor
		var took time.Duration
		for s := 0; s < n; s++ {
			makePartial(s)
			start := time.Now()
			for q := range best {
				scratch = knn.MergeSorted(scratch[:0], best[q], buf[q*k:(q+1)*k], k, id)
				best[q] = append(best[q][:0], scratch...)
			}
			took += time.Since(start)
		}
		return took
	}
	sorted := func(n int) time.Duration {
		best := make([][]knn.Neighbor, queries)
		var took time.Duration
		for s := 0; s < n; s++ {
			makePartial(s)
			start := time.Now()
			for q := range best {
				best[q] = append(best[q], buf[q*k:(q+1)*k]...)
				slices.SortFunc(best[q], knn.Compare)
				best[q] = slices.CompactFunc(best[q], func(a, b knn.Neighbor) bool { return a.ID == b.ID })
				best[q] = best[q][:min(k, len(best[q]))]
			}
			took += time.Since(start)
		}
		return took
	}
	newT, oldT := linear(shards), sorted(shards/10)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	times := []time.Duration{newT, oldT}
	newMs := times[0].Seconds() * 1e3
	oldMs := times[1].Seconds() * 1e3 * 10
	o.logf("merge: %d partials × %d queries × k=%d: %.1f ms (sort-based, scaled: %.0f ms)", shards, queries, k, newMs, oldMs)
	return []Result{budget(fmt.Sprintf("merge_topk_%dk_partials", shards/1000), "ms", newMs, oldMs)}, nil
}
