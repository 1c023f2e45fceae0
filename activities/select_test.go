package activities

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/ortrun"
	"dcd/internal/selection"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
)

func memActivities(t *testing.T) *Activities {
	t.Helper()
	b, err := blob.OpenBucket(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return &Activities{Bucket: b, Mem: mem}
}

// writeNeighbors writes runs/r/neighbors.arrow: for each query, its
// candidates (pool id, distance) nearest first.
func writeNeighbors(t *testing.T, a *Activities, lists [][]struct {
	id   int64
	dist float32
}) {
	t.Helper()
	nb := newNeighborBuilder(a)
	defer nb.release()
	for q, list := range lists {
		for r, c := range list {
			domain := "clean"
			if c.id%2 == 0 {
				domain = "blur"
			}
			nb.add(int32(q), int32(r), c.dist, dataset.Item{ID: c.id, Key: fmt.Sprintf("pool/%03d.png", c.id), Label: "a", Domain: domain, Version: fmt.Sprintf("v%d", c.id)})
		}
	}
	rec := nb.record()
	defer rec.Release()
	if err := store.WriteArrow(context.Background(), a.Bucket, RunKey("r", "neighbors.arrow"), schemas.Neighbors, a.Mem, rec); err != nil {
		t.Fatal(err)
	}
}

type cand = struct {
	id   int64
	dist float32
}

func selectedIDs(t *testing.T, a *Activities, res SelectResult) []int64 {
	t.Helper()
	rows, err := a.readManifest(context.Background(), res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, r := range rows {
		var id int64
		fmt.Sscanf(r.key, "pool/%d.png", &id)
		ids = append(ids, id)
	}
	if len(ids) != res.Size {
		t.Errorf("manifest has %d rows, result says %d", len(ids), res.Size)
	}
	return ids
}

// The strategies choose from the same merged candidates: each query's K
// nearest, a global budget by min or mean distance, or a threshold.
func TestSelectStrategies(t *testing.T) {
	a := memActivities(t)
	// Two queries, four candidates each (scan_k 4).
	writeNeighbors(t, a, [][]cand{
		{{1, 0.1}, {2, 0.2}, {3, 0.3}, {4, 5.0}},
		{{5, 0.5}, {2, 0.6}, {6, 0.9}, {7, 1.0}},
	})
	base := schemas.Config{Selection: schemas.Selection{K: 2}}.WithDefaults().Selection
	for _, tc := range []struct {
		name string
		sel  schemas.Selection
		want []int64
	}{
		{"per_query k=2", base, []int64{1, 2, 5}},
		{"per_query k=1", with(base, func(s *schemas.Selection) { s.K = 1 }), []int64{1, 5}},
		{"global min budget 3", with(base, func(s *schemas.Selection) { s.Strategy, s.Budget = schemas.Global, 3 }), []int64{1, 2, 3}},
		// mean over both queries; an absent pair counts with the query's
		// farthest kept distance (5.0 for query 0, 1.0 for query 1): 2 is
		// kept by both (0.4), 1 → (0.1+1)/2, 5 → (5+0.5)/2, 3 → 0.65.
		{"global mean budget 2", with(base, func(s *schemas.Selection) { s.Strategy, s.Budget, s.Aggregate = schemas.Global, 2, schemas.AggMean }), []int64{1, 2}},
		{"threshold 0.35", with(base, func(s *schemas.Selection) { s.Strategy, s.Threshold = schemas.Threshold, 0.35 }), []int64{1, 2, 3}},
		{"threshold mean 0.6", with(base, func(s *schemas.Selection) {
			s.Strategy, s.Threshold, s.Aggregate = schemas.Threshold, 0.6, schemas.AggMean
		}), []int64{1, 2}},
	} {
		tc.sel.ErrorDomain = "blur"
		res, err := a.SelectDebugTrain(context.Background(), SelectInput{Run: "r", Method: "dcd:" + fmt.Sprint(len(tc.name)), Selection: tc.sel})
		if err != nil {
			t.Fatal(err)
		}
		got := selectedIDs(t, a, res)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: selected %v, want %v", tc.name, got, tc.want)
		}
		// The pool's versions travel with the images, into the keys of
		// the features cache the selection's embedding uses.
		rows, _ := a.readManifest(context.Background(), res.Manifest)
		for i, r := range rows {
			if want := fmt.Sprintf("v%d", got[i]); r.version != want {
				t.Errorf("%s: %s has version %q in the selection, want the pool's %q", tc.name, r.key, r.version, want)
			}
		}
		hits := 0
		for _, id := range got {
			if id%2 == 0 {
				hits++
			}
		}
		if res.Precision == nil || math.Abs(*res.Precision-float64(hits)/float64(len(got))) > 1e-9 {
			t.Errorf("%s: precision %v, want %d/%d", tc.name, res.Precision, hits, len(got))
		}
	}
}

// A global budget or a threshold by the nearest query that reaches past
// the neighbours the scan kept says so: an image the scan left out is at
// least the horizon (the least farthest kept distance of the queries,
// here 1.0) from every query, and may be nearer than what was chosen. A
// threshold that takes no image names the nearest.
func TestSelectNotesTheScansReach(t *testing.T) {
	a := memActivities(t)
	writeNeighbors(t, a, [][]cand{
		{{1, 0.1}, {2, 0.2}, {3, 0.3}, {4, 5.0}},
		{{5, 0.5}, {2, 0.6}, {6, 0.9}, {7, 1.0}},
	})
	base := schemas.Config{Selection: schemas.Selection{K: 2}}.WithDefaults().Selection
	global := func(budget int) schemas.Selection {
		return with(base, func(s *schemas.Selection) { s.Strategy, s.Budget = schemas.Global, budget })
	}
	for _, tc := range []struct {
		name  string
		sel   schemas.Selection
		scanK int
		want  string // in the note; "" for none
	}{
		{"per_query", base, 4, ""},
		{"global within reach", global(3), 4, ""},
		{"global past the horizon", global(7), 4, "the budget's last image is 5 away, past where the scan kept 4 neighbours a query (selection.scan_k), the nearest of the images it left out at least 1 away; raise selection.scan_k (to 7"},
		{"global not filled", global(9), 4, "selection: 7 images of a budget of 9"},
		{"global, the scan kept every pool image", global(9), 5, ""},
		{"global, scan_k not known", global(9), 0, ""},
		{"threshold within reach", with(base, func(s *schemas.Selection) { s.Strategy, s.Threshold = schemas.Threshold, 0.35 }), 4, ""},
		{"threshold past it", with(base, func(s *schemas.Selection) { s.Strategy, s.Threshold = schemas.Threshold, 2 }), 4, "threshold 2 reaches past where"},
		{"threshold nearer than every image", with(base, func(s *schemas.Selection) { s.Strategy, s.Threshold = schemas.Threshold, 0.05 }), 4, "no pool image is within threshold 0.05 (the nearest is 0.1 away, by min); raise selection.threshold"},
		{"mean, budget filled", with(global(3), func(s *schemas.Selection) { s.Aggregate = schemas.AggMean }), 4, ""},
		{"mean, budget not filled", with(global(9), func(s *schemas.Selection) { s.Aggregate = schemas.AggMean }), 4, "selection: 7 images of a budget of 9"},
		{"mean, the scan kept every pool image", with(global(9), func(s *schemas.Selection) { s.Aggregate = schemas.AggMean }), 5, ""},
		// By the mean, an image the scan left out is at least (5+1)/2 = 3
		// away: the mean of the queries' farthest kept distances.
		{"mean, threshold within reach", with(base, func(s *schemas.Selection) {
			s.Strategy, s.Threshold, s.Aggregate = schemas.Threshold, 2.9, schemas.AggMean
		}), 4, ""},
		{"mean, threshold past it", with(base, func(s *schemas.Selection) {
			s.Strategy, s.Threshold, s.Aggregate = schemas.Threshold, 3, schemas.AggMean
		}), 4,
			"threshold 3 reaches past where the scan kept 4 neighbours a query (selection.scan_k), the images it left out at least 3 away on the mean"},
	} {
		res, err := a.SelectDebugTrain(context.Background(), SelectInput{Run: "r", Method: "dcd:n", Selection: tc.sel, ScanK: tc.scanK})
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == "" && res.Note != "" || !strings.Contains(res.Note, tc.want) {
			t.Errorf("%s: note %q, want %q", tc.name, res.Note, tc.want)
		}
	}
}

func with(s schemas.Selection, f func(*schemas.Selection)) schemas.Selection {
	f(&s)
	return s
}

// The random baseline draws n distinct pool images, the same ones for the
// same seed and others for another.
func TestSelectRandom(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	id := int64(0)
	for s := range 3 {
		var shard dataset.Shard
		for range 40 {
			shard.Items = append(shard.Items, dataset.Item{ID: id, Key: fmt.Sprintf("pool/%03d.png", id), Label: "a", Domain: []string{"blur", "clean", "clean", "clean"}[id%4]})
			id++
		}
		if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", Pool, s), shard.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	draw := func(seed uint64, n int) ([]int64, SelectResult) {
		res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: n, Seed: seed, ErrorDomain: "blur"})
		if err != nil {
			t.Fatal(err)
		}
		return selectedIDs(t, a, res), res
	}
	one, res := draw(7, 30)
	two, _ := draw(7, 30)
	other, _ := draw(8, 30)
	if len(one) != 30 || !slices.Equal(one, two) || slices.Equal(one, other) {
		t.Errorf("seed 7: %v and %v; seed 8: %v", one, two, other)
	}
	if len(slices.Compact(slices.Clone(one))) != 30 {
		t.Errorf("repeated picks: %v", one)
	}
	if res.Precision == nil {
		t.Error("no precision though the pool has domains")
	}
	all, _ := draw(1, 500)
	if len(all) != 120 {
		t.Errorf("asking for more than the pool gave %d, want the whole pool (120)", len(all))
	}
	// When the scan rejected nothing, the run's shard index finds the
	// images drawn: the same draw, from only the shards it falls in (the
	// others are gone here).
	index, _ := json.Marshal(ShardIndex{FirstIDs: []int64{0, 40, 80}})
	if err := store.WriteAll(ctx, a.Bucket, ShardIndexKey("r", Pool), index); err != nil {
		t.Fatal(err)
	}
	manifests := map[int][]byte{}
	for s := range 3 {
		m, err := a.Bucket.ReadAll(ctx, ShardKey("r", Pool, s))
		if err != nil {
			t.Fatal(err)
		}
		manifests[s] = m
	}
	for seed := range uint64(6) {
		want, _ := draw(seed, 1)
		for s := range 3 {
			if int64(s) != want[0]/40 {
				a.Bucket.Delete(ctx, ShardKey("r", Pool, s))
			}
		}
		res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 1, Seed: seed, NoPoolRejects: true})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if got := selectedIDs(t, a, res); !slices.Equal(got, want) {
			t.Errorf("seed %d, no rejects: drew %v, want %v", seed, got, want)
		}
		for s, m := range manifests {
			if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", Pool, s), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	// An index that misplaces the ids (another plan's) is found out: the
	// shards are read in order instead, for the same draw.
	for _, firsts := range [][]int64{{0, 40, 80}, {0, 30, 80}} {
		index, _ := json.Marshal(ShardIndex{FirstIDs: firsts})
		if err := store.WriteAll(ctx, a.Bucket, ShardIndexKey("r", Pool), index); err != nil {
			t.Fatal(err)
		}
		if res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 30, Seed: 7, NoPoolRejects: true}); err != nil {
			t.Fatalf("index %v: %v", firsts, err)
		} else if got := selectedIDs(t, a, res); !slices.Equal(got, one) {
			t.Errorf("seed 7, no rejects, index %v: drew %v, want %v", firsts, got, one)
		}
	}
	// With the scan's model, only images it embedded are drawn: shard 1's
	// rejects never are, and the whole pool is the 120 less them.
	sim := scanRejected(t, a, 1, "pool/040.png", "pool/041.png", "pool/079.png")
	for seed := range uint64(20) {
		res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 117, Seed: seed, Similarity: sim})
		if err != nil {
			t.Fatal(err)
		}
		got := selectedIDs(t, a, res)
		if len(got) != 117 || slices.Contains(got, 40) || slices.Contains(got, 41) || slices.Contains(got, 79) {
			t.Fatalf("seed %d: %d drawn, rejects among them: %v", seed, len(got), got)
		}
	}
	// Uniform: over many seeds every position is drawn about as often.
	counts := make([]int, 120)
	for seed := range uint64(200) {
		for _, i := range sample(rand.New(rand.NewPCG(seed, 1)), 120, 12) {
			counts[i]++
		}
	}
	for i, c := range counts {
		if c < 5 || c > 45 { // expected 20
			t.Errorf("position %d drawn %d times in 200 draws of 12 of 120", i, c)
		}
	}
}

// The guards drop a selected image whose features nearly equal a test
// image's (a leak) and the worse-ranked of two near-equal selected images
// (a duplicate), and keep the rest.
func TestGuardSelection(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	a := memActivities(t)
	a.Sessions = NewSessions(ortrun.Options{Threads: 1}, ortrun.Options{Threads: 1})
	defer a.Sessions.Close()
	ctx := context.Background()
	spec := rowsSpec
	vec := func(i int) []float32 { // well spread points
		v := make([]float32, 4)
		for j := range v {
			v[j] = float32(math.Sin(float64(7*i+3*j+1)) * 10)
		}
		return v
	}
	labels := map[string]string{} // of the images not labelled "a"
	writeSet := func(ds string, keys []string, vecs [][]float32) {
		var shard dataset.Shard
		var images []embed.Image
		var data []float32
		for i, k := range keys {
			shard.Items = append(shard.Items, dataset.Item{ID: int64(i), Key: k, Label: cmp.Or(labels[k], "a")})
			images = append(images, embed.Image{URI: k})
			data = append(data, vecs[i]...)
		}
		if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", ds, 0), shard.Marshal()); err != nil {
			t.Fatal(err)
		}
		rec := features.Record(a.Mem, spec.Columns, embed.Batch{Images: images, Vectors: [][]float32{data, make([]float32, len(keys)*2)}, Dims: []int{4, 2}}, "")
		defer rec.Release()
		if err := store.WriteArrow(ctx, a.Bucket, features.Key(spec, shard.Digest()), rec.Schema(), a.Mem, rec); err != nil {
			t.Fatal(err)
		}
	}
	var testKeys, heldKeys []string
	var testVecs, heldVecs [][]float32
	for i := range 20 {
		testKeys, testVecs = append(testKeys, fmt.Sprintf("test/%d.png", i)), append(testVecs, vec(i))
		heldKeys, heldVecs = append(heldKeys, fmt.Sprintf("held/%d.png", i)), append(heldVecs, vec(100+i))
	}
	writeSet(Test, testKeys, testVecs)
	writeSet(ErrorHeldout, heldKeys, heldVecs)
	near := func(v []float32) []float32 {
		out := slices.Clone(v)
		out[0] += 0.001
		return out
	}
	// Selection: 0 copies held/3, 1 and 2 are near-equal (2 ranks better),
	// 3..5 are ordinary.
	selKeys := []string{"pool/0.png", "pool/1.png", "pool/2.png", "pool/3.png", "pool/4.png", "pool/5.png"}
	selVecs := [][]float32{near(heldVecs[3]), vec(200), near(vec(200)), vec(201), vec(202), vec(203)}
	var chosen []selection.Chosen
	for i, k := range selKeys {
		chosen = append(chosen, selection.Chosen{Item: dataset.Item{Key: k, Label: "a", Version: fmt.Sprint("v", i)}, Score: []float64{1, 3, 2, 4, 5, 6}[i]})
	}
	if err := a.writeSelection(ctx, MethodKey("r", "dcd", "selected.csv"), chosen); err != nil {
		t.Fatal(err)
	}
	writeSet("sel", selKeys, selVecs)
	in := GuardInput{Run: "r", Method: "dcd", Selected: MethodKey("r", "dcd", "selected.csv"), Dataset: "sel", Shards: 1,
		Model: ModelRef{Spec: spec}, TestShards: 1, HeldoutShards: 1, Dedupe: 1e-4, Leakage: 1e-4}
	res, err := a.GuardSelection(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := a.manifestRows(ctx, res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 1 || res.Duplicates != 1 || res.Size != 4 || kept["pool/0.png\na"] != 0 || kept["pool/1.png\na"] != 0 || kept["pool/2.png\na"] != 1 {
		t.Errorf("leaks %d duplicates %d size %d kept %v", res.Leaks, res.Duplicates, res.Size, kept)
	}
	// The kept images keep their pool versions, which their shards'
	// cache keys are made of.
	if err := dataset.Walk(ctx, a.Bucket, schemas.Dataset{Manifest: res.Manifest}, func(it dataset.Item) error {
		if want := fmt.Sprint("v", slices.Index(selKeys, it.Key)); it.Version != want {
			t.Errorf("%s: version %q in debug_train.csv, want %q", it.Key, it.Version, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dropped, _ := a.Bucket.ReadAll(ctx, MethodKey("r", "dcd", "dropped.csv"))
	for _, want := range []string{"/pool/0.png,leak,/held/3.png", "/pool/1.png,duplicate,/pool/2.png"} {
		if !containsLine(string(dropped), want) {
			t.Errorf("dropped.csv lacks %q:\n%s", want, dropped)
		}
	}
	// Turned off, nothing is dropped.
	in.Dedupe, in.Leakage = -1, -1
	if res, err := a.GuardSelection(ctx, in); err != nil || res.Size != 6 {
		t.Errorf("guards off: %+v, %v", res, err)
	}

	// A pool that lists an image twice: the second is the first's
	// duplicate, and the first stays.
	twice := []string{"pool/3.png", "pool/7.png", "pool/7.png"}
	chosen = nil
	for i, k := range twice {
		chosen = append(chosen, selection.Chosen{Item: dataset.Item{Key: k, Label: "a"}, Score: float64(i)})
	}
	if err := a.writeSelection(ctx, MethodKey("r", "twice", "selected.csv"), chosen); err != nil {
		t.Fatal(err)
	}
	writeSet("twice", twice, [][]float32{vec(201), vec(300), vec(300)})
	in = GuardInput{Run: "r", Method: "twice", Selected: MethodKey("r", "twice", "selected.csv"), Dataset: "twice", Shards: 1,
		Model: ModelRef{Spec: spec}, TestShards: 1, HeldoutShards: 1, Dedupe: 1e-4, Leakage: 1e-4}
	res, err = a.GuardSelection(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	kept, err = a.manifestRows(ctx, res.Manifest)
	if err != nil || res.Duplicates != 1 || res.Size != 2 || kept["pool/7.png\na"] != 1 {
		t.Errorf("an image listed twice: duplicates %d, size %d, kept %v, %v; want one of its two kept", res.Duplicates, res.Size, kept, err)
	}

	// Of two near-equal images, the better ranked's label no class: given
	// the classes, the other stays (retraining would skip the first).
	pair := []selection.Chosen{{Item: dataset.Item{Key: "pool/8.png", Label: "x"}, Score: 1}, {Item: dataset.Item{Key: "pool/9.png", Label: "a"}, Score: 2}}
	if err := a.writeSelection(ctx, MethodKey("r", "pair", "selected.csv"), pair); err != nil {
		t.Fatal(err)
	}
	labels["pool/8.png"] = "x"
	apart := []float32{40, -40, 40, -40} // far from every evaluation image
	writeSet("pair", []string{"pool/8.png", "pool/9.png"}, [][]float32{apart, near(apart)})
	for _, classes := range [][]string{nil, {"a", "b"}} {
		in = GuardInput{Run: "r", Method: "pair", Selected: MethodKey("r", "pair", "selected.csv"), Dataset: "pair", Shards: 1,
			Model: ModelRef{Spec: spec}, TestShards: 1, HeldoutShards: 1, Dedupe: 1e-4, Leakage: 1e-4, Classes: classes}
		if res, err = a.GuardSelection(ctx, in); err != nil {
			t.Fatal(err)
		}
		kept, err = a.manifestRows(ctx, res.Manifest)
		want := "pool/8.png\nx" // the better ranked
		if classes != nil {
			want = "pool/9.png\na"
		}
		if err != nil || res.Duplicates != 1 || kept[want] != 1 {
			t.Errorf("classes %v: duplicates %d, kept %v, %v; want %q kept", classes, res.Duplicates, kept, err, want)
		}
	}

	// A cluster of more copies than the search's first k (16): each
	// within the threshold of every other, the worst ranked nearest each
	// other and farthest from the best. One stays, the best ranked.
	var cluster []selection.Chosen
	var clusterKeys []string
	var clusterVecs [][]float32
	for i := range 40 {
		k := fmt.Sprintf("pool/c%d.png", i)
		v := slices.Clone(apart)
		v[0] += 0.004 * float32(i)
		clusterKeys, clusterVecs = append(clusterKeys, k), append(clusterVecs, v)
		score := float64(40 - i) // 39 ranks first after 0, then 38, …
		if i == 0 {
			score = 0
		}
		cluster = append(cluster, selection.Chosen{Item: dataset.Item{Key: k, Label: "a"}, Score: score})
	}
	if err := a.writeSelection(ctx, MethodKey("r", "cluster", "selected.csv"), cluster); err != nil {
		t.Fatal(err)
	}
	writeSet("cluster", clusterKeys, clusterVecs)
	in = GuardInput{Run: "r", Method: "cluster", Selected: MethodKey("r", "cluster", "selected.csv"), Dataset: "cluster", Shards: 1,
		Model: ModelRef{Spec: spec}, TestShards: 1, HeldoutShards: 1, Dedupe: 1e-4, Leakage: 1e-4}
	if res, err = a.GuardSelection(ctx, in); err != nil {
		t.Fatal(err)
	}
	kept, err = a.manifestRows(ctx, res.Manifest)
	if err != nil || res.Duplicates != 39 || res.Size != 1 || kept["pool/c0.png\na"] != 1 {
		t.Errorf("a cluster of 40 copies: duplicates %d, size %d, kept %v, %v; want pool/c0.png alone", res.Duplicates, res.Size, kept, err)
	}

	// Features with a large common offset (ReLU features with a bias, say)
	// guard as they did without it: the search's float32 distances are
	// then off by more than the thresholds, the exact ones are not.
	shift := func(vs [][]float32) [][]float32 {
		out := make([][]float32, len(vs))
		for i, v := range vs {
			out[i] = slices.Clone(v)
			for j := range out[i] {
				out[i][j] += 3000
			}
		}
		return out
	}
	writeSet(Test, testKeys, shift(testVecs))
	writeSet(ErrorHeldout, heldKeys, shift(heldVecs))
	writeSet("sel-shifted", selKeys, shift(selVecs))
	in = GuardInput{Run: "r", Method: "dcd", Selected: MethodKey("r", "dcd", "selected.csv"), Dataset: "sel-shifted", Shards: 1,
		Model: ModelRef{Spec: spec}, TestShards: 1, HeldoutShards: 1, Dedupe: 1e-4, Leakage: 1e-4}
	if res, err = a.GuardSelection(ctx, in); err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 1 || res.Duplicates != 1 || res.Size != 4 {
		t.Errorf("features offset by 3000: leaks %d duplicates %d size %d, want 1, 1 and 4 as without", res.Leaks, res.Duplicates, res.Size)
	}
}

// A selection's scores read back as they were written: the guards keep
// the better-ranked of two copies by them, and a float32 distance needs
// nine digits (or a mean seventeen) to stay apart from the next.
func TestSelectionScoresRoundTrip(t *testing.T) {
	ctx := context.Background()
	a := fileActivities(t)
	scores := []float64{float64(float32(0.123456781)), float64(math.Nextafter32(float32(0.123456781), 1)), 1.0 / 3, 2.0 / 3 * 1e-9}
	var chosen []selection.Chosen
	for i, v := range scores {
		chosen = append(chosen, selection.Chosen{Item: dataset.Item{ID: int64(i), Key: fmt.Sprintf("pool/%d.png", i), Label: "a"}, Score: v})
	}
	if err := a.writeSelection(ctx, "r/selected.csv", chosen); err != nil {
		t.Fatal(err)
	}
	rows, err := a.readManifest(ctx, "r/selected.csv")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		if r.score != scores[i] {
			t.Errorf("%s: score %v read back as %v", r.key, scores[i], r.score)
		}
	}
}

// A selection cut short by a hand in the bucket fails naming its line, not
// with a panic.
func TestDamagedSelectionNamed(t *testing.T) {
	ctx := context.Background()
	a := fileActivities(t)
	store.WriteAll(ctx, a.Bucket, "r/selected.csv", []byte("uri,label,domain\n/pool/1.png,a,\n/pool/2.png\n"))
	_, err := a.readManifest(ctx, "r/selected.csv")
	if err == nil || !strings.Contains(err.Error(), "line 3 has 1 fields, no label") {
		t.Errorf("a row without its label: %v", err)
	}
}

func containsLine(s, prefix string) bool {
	for _, l := range strings.Split(s, "\n") {
		if len(l) >= len(prefix) && l[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

// Given the classes, random draws as many pool images with a class's label
// as the reference dcd selection holds, a uniform sample of those: both
// then retrain on as many rows. With every label a class, the draw is the
// one made whatever the labels.
func TestSelectRandomInClasses(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	pool := func(label func(id int64) string) {
		id := int64(0)
		for s := range 3 {
			var shard dataset.Shard
			for range 40 {
				shard.Items = append(shard.Items, dataset.Item{ID: id, Key: fmt.Sprintf("pool/%03d.png", id), Label: label(id)})
				id++
			}
			if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", Pool, s), shard.Marshal()); err != nil {
				t.Fatal(err)
			}
		}
		index, _ := json.Marshal(ShardIndex{FirstIDs: []int64{0, 40, 80}})
		if err := store.WriteAll(ctx, a.Bucket, ShardIndexKey("r", Pool), index); err != nil {
			t.Fatal(err)
		}
	}
	// The reference: 12 rows, 2 of a label no class has.
	var ref []selection.Chosen
	for i := range 12 {
		label := "a"
		if i < 2 {
			label = "x"
		}
		ref = append(ref, selection.Chosen{Item: dataset.Item{ID: int64(200 + i), Key: fmt.Sprintf("q/%d.png", i), Label: label}})
	}
	refKey := MethodKey("r", "dcd", "debug_train.csv")
	if err := a.writeSelection(ctx, refKey, ref); err != nil {
		t.Fatal(err)
	}
	classes := []string{"a", "b"}
	draw := func(seed uint64, index bool) []int64 {
		t.Helper()
		res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 12, Seed: seed,
			NoPoolRejects: index, Classes: classes, Reference: refKey})
		if err != nil {
			t.Fatal(err)
		}
		return selectedIDs(t, a, res)
	}

	pool(func(int64) string { return "a" })
	whatever, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 10, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := draw(3, false), selectedIDs(t, a, whatever); !slices.Equal(got, want) {
		t.Errorf("every label a class: drew %v, want the draw whatever the labels, %v", got, want)
	}

	// Two thirds of the pool off the classes.
	pool(func(id int64) string { return map[bool]string{true: "a", false: "x"}[id%3 == 0] })
	counts := make([]int, 120)
	for seed := range uint64(300) {
		got := draw(seed, seed%2 == 0)
		if len(got) != 10 || len(slices.Compact(slices.Clone(got))) != 10 {
			t.Fatalf("seed %d: drew %v, want 10 distinct images, as many as the reference's in its classes", seed, got)
		}
		for _, id := range got {
			if id%3 != 0 {
				t.Fatalf("seed %d: drew %d, whose label is no class", seed, id)
			}
			counts[id]++
		}
		if seed < 2 && !slices.Equal(got, draw(seed, seed%2 == 0)) {
			t.Errorf("seed %d drew twice: other images", seed)
		}
	}
	// Uniform over the 40 in the classes: 75 draws each on average.
	for id, n := range counts {
		if id%3 == 0 && (n < 40 || n > 115) {
			t.Errorf("image %d drawn %d times in 300 draws of 10 of 40, want about 75", id, n)
		}
	}

	// A reference none of whose images has a class's label: none drawn,
	// and the note says why.
	if err := a.writeSelection(ctx, refKey, ref[:2]); err != nil {
		t.Fatal(err)
	}
	none, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 2, Seed: 1, Classes: classes, Reference: refKey})
	if err != nil {
		t.Fatal(err)
	}
	if none.Size != 0 || !strings.Contains(none.Note, "none of the 2 images dcd kept has a weak label that is a class") {
		t.Errorf("a reference of no class: %d drawn, note %q", none.Size, none.Note)
	}

	// Of a pool the scan rejected images of, the classes' images are
	// counted with the rejects: all 38 the scan embedded, none other.
	sim := scanRejected(t, a, 0, "pool/000.png", "pool/003.png", "pool/004.png")
	res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: 3, PoolImages: 120, N: 100, Seed: 1,
		Similarity: sim, Classes: classes})
	if err != nil {
		t.Fatal(err)
	}
	if got := selectedIDs(t, a, res); len(got) != 38 || slices.ContainsFunc(got, func(id int64) bool { return id%3 != 0 || id == 0 || id == 3 }) {
		t.Errorf("with rejects, 100 asked: drew %d: %v; want the 38 embedded images of the classes", len(got), got)
	}
}

// The draw among the classes reads every pool manifest once, to count
// what each shard may give, and then only those of the shards it falls
// in, with the scan's rejects or without them.
func TestSelectRandomReadsDrawnShards(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	const shards = 30
	for s := range shards {
		var shard dataset.Shard
		for j := range 4 {
			id := int64(4*s + j)
			label := "x" // of no class, but for one image in the pool
			if id == 77 {
				label = "a"
			}
			shard.Items = append(shard.Items, dataset.Item{ID: id, Key: fmt.Sprintf("pool/%03d.png", id), Label: label})
		}
		if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", Pool, s), shard.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	var firsts []int64
	for s := range shards {
		firsts = append(firsts, int64(4*s))
	}
	index, _ := json.Marshal(ShardIndex{FirstIDs: firsts}) // as a pass's plan writes it
	if err := store.WriteAll(ctx, a.Bucket, ShardIndexKey("r", Pool), index); err != nil {
		t.Fatal(err)
	}
	refKey := MethodKey("r", "dcd", "debug_train.csv")
	if err := a.writeSelection(ctx, refKey, []selection.Chosen{{Item: dataset.Item{ID: 500, Key: "q/0.png", Label: "a"}}}); err != nil {
		t.Fatal(err)
	}
	sim := ModelRef{Path: "sim.onnx", Spec: features.Spec{ModelDigest: "s"}}
	for s := range shards {
		sh, err := a.readShard(ctx, ShardKey("r", Pool, s))
		if err != nil {
			t.Fatal(err)
		}
		if err := store.WriteAll(ctx, a.Bucket, rejectsKey(features.Key(sim.Spec, sh.Digest())), []byte("[]")); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	reads := map[string]int{}
	counting := &Activities{Mem: a.Mem, Bucket: storetest.Hooked(a.Bucket, &storetest.Hooks{BeforeRead: func(_ context.Context, key string) error {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(key, "runs/r/shards/") && strings.HasSuffix(key, ".csv") {
			reads[key]++
		}
		return nil
	}})}
	// A manifest's read may take more than one request.
	if _, err := counting.readShard(ctx, ShardKey("r", Pool, 0)); err != nil {
		t.Fatal(err)
	}
	perRead := reads[ShardKey("r", Pool, 0)]
	for _, noRejects := range []bool{true, false} {
		clear(reads)
		in := RandomInput{Run: "r", Method: "random", PoolShards: shards, PoolImages: 4 * shards, N: 1, Seed: 5,
			NoPoolRejects: noRejects, Classes: []string{"a", "b"}, Reference: refKey}
		if !noRejects {
			in.Similarity = sim
		}
		res, err := counting.SelectRandom(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if got := selectedIDs(t, a, res); !slices.Equal(got, []int64{77}) {
			t.Errorf("no rejects %v: drew %v, want the one image of the classes, 77", noRejects, got)
		}
		n := 0
		for _, c := range reads {
			n += c
		}
		// Each manifest once to count, the first draw's shard, the second's.
		if n > perRead*(shards+2) || reads[ShardKey("r", Pool, 19)] == 0 {
			t.Errorf("no rejects %v: %d requests for manifests of a %d-shard pool, want at most %d (%d a read): %v", noRejects, n, shards, perRead*(shards+2), perRead, reads)
		}
	}
	// A shard's entry dropped since the scan (another pass found it
	// damaged) lists no rejects: the draw goes on.
	sh, err := a.readShard(ctx, ShardKey("r", Pool, 3))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Bucket.Delete(ctx, rejectsKey(features.Key(sim.Spec, sh.Digest()))); err != nil {
		t.Fatal(err)
	}
	res, err := a.SelectRandom(ctx, RandomInput{Run: "r", Method: "random", PoolShards: shards, PoolImages: 4 * shards, N: 1, Seed: 5,
		Similarity: sim, Classes: []string{"a", "b"}, Reference: refKey})
	if err != nil {
		t.Fatalf("a draw after a shard's entry was dropped: %v", err)
	}
	if got := selectedIDs(t, a, res); !slices.Equal(got, []int64{77}) {
		t.Errorf("a draw after a shard's entry was dropped: %v, want 77", got)
	}
}

// scanRejected writes the rejects of run r's three pool shards as a scan
// with the model it returns would have cached them: uris of shard, none
// of the others.
func scanRejected(t *testing.T, a *Activities, shard int, uris ...string) ModelRef {
	t.Helper()
	ctx := context.Background()
	sim := ModelRef{Path: "sim.onnx", Spec: features.Spec{ModelDigest: "s"}}
	for s := range 3 {
		sh, err := a.readShard(ctx, ShardKey("r", Pool, s))
		if err != nil {
			t.Fatal(err)
		}
		var rejects []embed.Reject
		if s == shard {
			for _, u := range uris {
				rejects = append(rejects, embed.Reject{URI: u, Reason: "x"})
			}
		}
		data, _ := json.Marshal(append([]embed.Reject{}, rejects...))
		if err := store.WriteAll(ctx, a.Bucket, rejectsKey(features.Key(sim.Spec, sh.Digest())), data); err != nil {
			t.Fatal(err)
		}
	}
	return sim
}
