// Package knn finds, for each query vector, its k nearest pool vectors by
// squared l2 distance.
//
// The scan is 2·queries·pool·d flops, so it runs as one matrix product on
// ONNX Runtime's optimised kernel (MLAS) through a one-node graph this
// package builds: −2·q·pᵀ as a bare Gemm, one pool block at a time,
// written straight into a buffer this package owns. The selection then adds
// ‖p‖² and ‖q‖² and keeps each query's k best with one comparison per
// (query, pool row) against the query's running cut-off, eight rows to a
// vector instruction on amd64 (skip), so it costs a small fraction of the
// product (BenchmarkTopK, and `starter bench`, measure it against the bare
// Gemm). Ties are broken by pool id, so the result is deterministic.
package knn

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

// Neighbor is one pool vector near a query.
type Neighbor struct {
	ID       int64   // pool id, the tie-breaker
	Index    int     // row within the pool slice given to TopK
	Distance float32 // squared l2
}

// Compare orders neighbours nearest first, then by pool id (a three-way
// comparison, for slices.SortFunc).
func Compare(a, b Neighbor) int {
	if c := cmp.Compare(a.Distance, b.Distance); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// Graph returns the product graph: inputs "queries" [M,d] and "pool"
// [N,d]; output "products" [M,N] = −2·q·pᵀ. The squared distance is
// ‖q‖² + (‖p‖² − 2·q·p); the norms are summed in Go (sumSquares, eight
// lanes an instruction) while ORT runs the block's product, and added as
// the selection reads each product. Given to Gemm as its bias, ‖p‖² cost
// a broadcast of the whole [M,N] output before the product (ORT copies C
// into Y, then accumulates): a full extra pass over memory as large as the
// product's own output, which on 16 cores took 0.8× the product's time.
// ORT's ReduceSumSquare in the same run came after the product, on the
// search's critical path (0.8 ms a block of 8,388 rows on 2 vCPUs);
// beside it, in Go, they cost 0.14 ms of a core and no wait.
func Graph() *onnx.Graph {
	sym := func(names ...string) []string { return names }
	return &onnx.Graph{
		Name: "dcd_knn",
		Inputs: []onnx.Value{
			{Name: "queries", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "D")},
			{Name: "pool", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("N", "D")},
		},
		Outputs: []onnx.Value{
			{Name: "products", Elem: onnx.Float, Shape: []int64{-1, -1}, DimNames: sym("M", "N")},
		},
		Nodes: []onnx.Node{
			{Op: "Gemm", Inputs: []string{"queries", "pool"}, Outputs: []string{"products"},
				Attrs: map[string]any{"transB": 1, "alpha": float32(-2)}},
		},
	}
}

// Budgets per graph run, in float32s: the scores matrix (queries×Block),
// which the Searcher keeps, and the pool block that MLAS packs are each
// kept near 32 MiB, whatever the number of queries or the dimension.
const (
	scoresBudget = 8 << 20
	poolBudget   = 8 << 20
	// minBlock is the fewest pool rows a graph run takes, below which
	// the Gemm's own costs dominate.
	minBlock = 256
)

// Searcher runs the k-NN graph. It is safe for concurrent use: products
// run one at a time, since each already uses every core, while the
// selections of concurrent searches (a worker searches several pool shards
// at once) run beside them.
type Searcher struct {
	sess *ortrun.Session
	// Block, when > 0, is how many pool rows one graph run scans; 0 picks
	// it from the budgets above, so memory stays bounded whatever the
	// number of queries, the dimension or the pool size.
	Block int
	// Workers is how many goroutines select from a block's scores; 0 means
	// GOMAXPROCS.
	Workers int

	product sync.Mutex // held while ORT runs a product

	// running admits Concurrent scans at once; the others wait their
	// turn before taking buffers. A worker may have many searches under
	// way (a recurring pass keeps reads in flight to hide a store's
	// latency), and each scan holds up to 64 MiB of scores.
	running     chan struct{}
	makeRunning sync.Once

	// free holds *buffers between searches: a worker searches shard
	// after shard, each with up to 64 MiB of scores. A sync.Pool keeps
	// one set per concurrent search while searches run, and lets an idle
	// worker's go at the next collections.
	free sync.Pool
}

// Concurrent is how many scans a Searcher runs at once: two keep the
// product (one at a time, on every core) busy while the other's last
// block is selected from.
const Concurrent = 2

// buffers are one search's scores and norms: one block being filled by
// the product while the other is selected from.
type buffers struct {
	scores [2][]float32
	norms  [2][]float32
}

// groupQueries is the most queries that go through the pool together
// (TopK); a variable for the tests.
var groupQueries = scoresBudget / minBlock

// NewSearcher builds the graph and its ORT session. On CUDA its products
// stay float32: in TF32 a shard searched on a GPU worker ranks its
// neighbours otherwise than the same shard, cached, searched on a CPU
// worker by the next pass.
func NewSearcher(opt ortrun.Options) (*Searcher, error) {
	model, err := Graph().Marshal()
	if err != nil {
		return nil, err
	}
	opt.NoTF32 = true
	sess, err := ortrun.NewSession("knn", model, []string{"queries", "pool"}, []string{"products"}, opt)
	if err != nil {
		return nil, err
	}
	return &Searcher{sess: sess}, nil
}

// Close releases the session.
func (s *Searcher) Close() error { return s.sess.Close() }

// BlockFor returns the pool rows per graph run for m queries and n pool
// rows of dimension d.
func (s *Searcher) BlockFor(m, n, d int) int {
	b := s.Block
	if b <= 0 {
		b = max(min(scoresBudget/max(m, 1), poolBudget/max(d, 1)), minBlock)
	}
	return max(min(b, n), 1)
}

// TopK returns, for each of the m queries (row-major, d wide), its k nearest
// rows of pool (n rows, ids[i] the pool id of row i), nearest first with
// ties broken by id. Fewer than k come back when the pool is smaller.
//
// A distance is ‖q‖² + (‖p‖² − 2·q·p) in float32, clamped at 0 (rounding in
// the expanded form can dip just below zero for identical vectors); the
// result is exactly the first k of all n rows sorted by that distance, then
// by id.
func (s *Searcher) TopK(queries []float32, m int, pool []float32, ids []int64, d, k int) ([][]Neighbor, error) {
	n := len(ids)
	if len(queries) != m*d || len(pool) != n*d {
		return nil, fmt.Errorf("knn: shapes: %d query values for %d×%d, %d pool values for %d×%d", len(queries), m, d, len(pool), n, d)
	}
	k = min(k, n) // no more can come back: size the heaps to the pool, not to k
	sel := make([]selector, m)
	heaps := make([]Neighbor, m*max(k, 0))
	for q := range sel {
		sel[q] = newSelector(k, norm2(queries[q*d:(q+1)*d]), heaps[q*k:(q+1)*k])
	}
	if k > 0 && n > 0 && m > 0 {
		// Queries past groupQueries go through the pool in groups, so that
		// blocks of minBlock rows keep the scores near scoresBudget (a
		// guard's search of a selection of 10^6 images against itself
		// would take 2 GB a scan): each query's selection is its own.
		for lo := 0; lo < m; lo += groupQueries {
			hi := min(lo+groupQueries, m)
			if err := s.scan(queries[lo*d:hi*d], hi-lo, pool, ids, d, sel[lo:hi]); err != nil {
				return nil, err
			}
		}
	}
	best := make([][]Neighbor, m)
	for q := range sel {
		best[q] = sel[q].result()
	}
	return best, nil
}

// buffers returns buffers for m×block scores: for two blocks, or for one
// when the search has only one.
func (s *Searcher) buffers(m, block, blocks int) *buffers {
	b, _ := s.free.Get().(*buffers)
	if b == nil {
		b = new(buffers)
	}
	for i := range min(blocks, len(b.scores)) {
		if cap(b.scores[i]) < m*block {
			b.scores[i] = make([]float32, m*block)
		}
		if cap(b.norms[i]) < block {
			b.norms[i] = make([]float32, block)
		}
	}
	return b
}

// scan runs the graph over each pool block and feeds the scores to the
// selectors. Workers goroutines share the queries' selection from a
// block while ORT computes the next block's scores (and a goroutine its
// norms) into the other buffers, so the product never waits on Go.
func (s *Searcher) scan(queries []float32, m int, pool []float32, ids []int64, d int, sel []selector) error {
	s.makeRunning.Do(func() { s.running = make(chan struct{}, Concurrent) })
	s.running <- struct{}{}
	defer func() { <-s.running }()
	n := len(ids)
	block := s.BlockFor(m, n, d)
	buf := s.buffers(m, block, (n+block-1)/block)
	defer s.free.Put(buf)
	workers := s.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// parallel runs fn over [0, items) on the workers, in chunks taken in
	// turn, so a worker that the OS holds back does not hold up the rest.
	parallel := func(items int, fn func(i int)) {
		const chunk = 16
		var next atomic.Int64
		var wg sync.WaitGroup
		for range max(min(workers, (items+chunk-1)/chunk), 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					lo := int(next.Add(chunk)) - chunk
					if lo >= items {
						return
					}
					for i := lo; i < min(lo+chunk, items); i++ {
						fn(i)
					}
				}
			}()
		}
		wg.Wait()
	}
	qt := ortrun.Tensor{Shape: []int64{int64(m), int64(d)}, Floats: queries}
	selected := make(chan struct{}, 1) // the previous block's selection is done
	selected <- struct{}{}
	for i, start := 0, 0; start < n; i, start = i+1, start+block {
		end := min(start+block, n)
		b := end - start
		scores, norms, rows := buf.scores[i%2][:m*b], buf.norms[i%2][:b], pool[start*d:end*d]
		summed := make(chan struct{})
		go func() { // beside the product, which reads the same rows
			for j := range norms {
				norms[j] = sumSquares(rows[j*d : (j+1)*d])
			}
			close(summed)
		}()
		s.product.Lock()
		err := s.sess.RunInto(
			[]ortrun.Tensor{qt, {Shape: []int64{int64(b), int64(d)}, Floats: rows}},
			[]ortrun.Tensor{{Shape: []int64{int64(m), int64(b)}, Floats: scores}},
		)
		s.product.Unlock()
		<-summed
		<-selected // a query's blocks are offered in order, and the buffer is free again
		if err != nil {
			return err
		}
		go func() {
			parallel(m, func(q int) { sel[q].scan(scores[q*b:(q+1)*b], norms, start, ids) })
			selected <- struct{}{}
		}()
	}
	<-selected
	return nil
}

// norm2 is ‖v‖², summed in eight float32 lanes (as a vector unit would)
// for speed, then in pairs.
func norm2(v []float32) float32 {
	var s [8]float32
	j := 0
	for ; j+8 <= len(v); j += 8 {
		w := v[j : j+8 : j+8]
		s[0] += w[0] * w[0]
		s[1] += w[1] * w[1]
		s[2] += w[2] * w[2]
		s[3] += w[3] * w[3]
		s[4] += w[4] * w[4]
		s[5] += w[5] * w[5]
		s[6] += w[6] * w[6]
		s[7] += w[7] * w[7]
	}
	for ; j < len(v); j++ {
		s[j%8] += v[j] * v[j]
	}
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

// selector keeps one query's k best candidates in a max-heap (the worst
// kept on top). A candidate enters when it beats the top by (distance, id).
// The scan compares raw scores with cut, a score at or a few ulps above the
// largest whose distance does not exceed the top's, so a row that cannot
// enter costs one comparison; the few that pass it are checked exactly
// (a row that ties the top's distance is compared by id).
type selector struct {
	k    int
	qq   float32 // ‖q‖²
	heap []Neighbor
	thr  float32 // the top's distance, once the heap is full
	cut  float32 // +Inf until the heap is full
}

func newSelector(k int, qq float32, heap []Neighbor) selector {
	return selector{k: k, qq: qq, heap: heap[:0], cut: float32(math.Inf(1))}
}

// scan offers one block: products[j] = −2·q·p and norms[j] = ‖p‖² of
// pool row base+j, whose score is their sum. skip passes over the groups
// of rows that cannot enter, nearly all of them once the heap is full.
func (s *selector) scan(products, norms []float32, base int, ids []int64) {
	norms = norms[:len(products)]
	if len(s.heap) == 0 {
		s.preset(products, norms)
	}
	for j := 0; j < len(products); {
		j += skip(products[j:], norms[j:], s.cut)
		for end := min(j+8, len(products)); j < end; j++ {
			if x := products[j] + norms[j]; x <= s.cut {
				row := base + j
				s.offer(Neighbor{ID: ids[row], Index: row, Distance: distance(x, s.qq)})
			}
		}
	}
}

// distance is a row's squared distance from its score x and the query's
// squared norm qq, at least 0 (rounding can take it below): +Inf where
// both overflowed, one to +Inf and the other to -Inf, which sums to NaN
// and, ranked by Compare, would come before every number.
func distance(x, qq float32) float32 {
	d := x + qq
	switch {
	case d >= 0:
		return d
	case d < 0:
		return 0
	}
	return float32(math.Inf(1))
}

// preset gives an empty heap a cut before its first block. A group's
// least score is a row's score, so at least k rows meet the k-th least of
// the minima of k or more groups, and no row above it can be among the k
// nearest. Only rows near the k best are offered then, instead of every
// row that beats the k best before it (about k·ln(n/k) of n rows in random
// order), which on a pass's shard (2,000 rows, k = 10) was most of the
// selection's time.
func (s *selector) preset(products, norms []float32) {
	const most = 256 // groups
	target := min(4*s.k, most)
	group := ((len(products)+target-1)/target + 7) &^ 7
	g := len(products) / group
	if g < s.k || s.k == 0 {
		return
	}
	var buf [most]float32
	mins := buf[:g]
	for i := range mins {
		mins[i] = minScore(products[i*group:(i+1)*group], norms[i*group:(i+1)*group])
		if mins[i] != mins[i] { // NaN: no row of the group counts
			mins[i] = float32(math.Inf(1))
		}
	}
	if t := kthSmallest(mins, s.k); !math.IsInf(float64(t), 1) {
		s.cut = scoreCut(max(float32(t+s.qq), 0), s.qq)
	}
}

// kthSmallest returns the k-th smallest of v (1 ≤ k ≤ len(v), no NaN),
// reordering v: a quickselect, linear where a sort is not.
func kthSmallest(v []float32, k int) float32 {
	k--
	for lo, hi := 0, len(v)-1; lo < hi; {
		p := v[lo+(hi-lo)/2]
		i, j := lo, hi
		for i <= j {
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i, j = i+1, j-1
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return v[k] // between the parts: equal to the pivot
		}
	}
	return v[k]
}

// worse orders the heap: a above b when a is farther (or as far, with a
// larger id).
func worse(a, b Neighbor) bool {
	return a.Distance > b.Distance || (a.Distance == b.Distance && a.ID > b.ID)
}

func (s *selector) offer(nb Neighbor) {
	h := s.heap
	if len(h) < s.k {
		h = append(h, nb)
		for i := len(h) - 1; i > 0; { // sift up
			p := (i - 1) / 2
			if !worse(h[i], h[p]) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
		s.heap = h
		if len(h) == s.k {
			s.thr = h[0].Distance
			s.cut = scoreCut(s.thr, s.qq)
		}
		return
	}
	if nb.Distance > s.thr { // passed the cut's slack only
		return
	}
	if !worse(h[0], nb) {
		return
	}
	h[0] = nb
	for i := 0; ; { // sift down
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && worse(h[c+1], h[c]) {
			c++
		}
		if !worse(h[c], h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	if h[0].Distance != s.thr {
		s.thr = h[0].Distance
		s.cut = scoreCut(s.thr, s.qq)
	}
}

// result returns the k best, nearest first, ties by id.
func (s *selector) result() []Neighbor {
	slices.SortFunc(s.heap, Compare)
	return s.heap
}

// scoreCut returns a score c such that every float32 score s with
// max(s+qq, 0) ≤ thr (thr ≥ 0) has s ≤ c, and c exceeds the largest such s
// by a few ulps at most. thr−qq is within half an ulp of the exact
// difference, and rounding s+qq can let s pass up to an ulp (at the
// largest magnitude involved) beyond it: four ulps cover both. Where a
// distance or a norm overflowed to +Inf there is no cut (+Inf): the next
// float above +Inf is NaN, which no score passes, and every later row,
// the nearer ones too, was turned away.
func scoreCut(thr, qq float32) float32 {
	c := float32(thr - qq)
	m := max(thr, abs32(qq), abs32(c))
	if math.IsInf(float64(m), 0) || m != m {
		return float32(math.Inf(1))
	}
	ulp := math.Float32frombits(math.Float32bits(m)+1) - m // m ≥ 0: its next float up
	return c + 4*ulp
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// MergeSorted appends to dst the k first elements of the union of a and b,
// two lists each in Compare order (by key), and returns it; an element with
// the same id as the one kept before it counts once. It is the linear step
// of a k-way merge that folds partial results into a running best: it stops
// after k, and returns at once when b's first element comes after a's k-th.
// dst must not share memory with a or b.
func MergeSorted[T any](dst, a, b []T, k int, key func(T) Neighbor) []T {
	if len(a) >= k && len(b) > 0 && Compare(key(a[k-1]), key(b[0])) < 0 {
		return append(dst, a[:k]...)
	}
	start := len(dst)
	var last int64
	for len(dst)-start < k && (len(a) > 0 || len(b) > 0) {
		var x T
		if len(b) == 0 || (len(a) > 0 && Compare(key(a[0]), key(b[0])) <= 0) {
			x, a = a[0], a[1:]
		} else {
			x, b = b[0], b[1:]
		}
		if id := key(x).ID; len(dst) > start && id == last {
			continue
		} else {
			last = id
		}
		dst = append(dst, x)
	}
	return dst
}
