package activities

import (
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow/go/v15/arrow/array"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/knn"
	"dcd/internal/selection"
	"dcd/internal/store"
	"dcd/schemas"
)

// SelectInput is one dcd method's selection from the merged neighbours.
type SelectInput struct {
	Run    string
	Method string
	// Selection is the method's selection (a variant's overrides applied).
	Selection schemas.Selection
	// ScanK is how many neighbours per query the pool scan kept
	// (Config.ScanK); 0, from passes started before it was passed: not
	// known, and no Note.
	ScanK int `json:",omitempty"`
}

// SelectResult describes a debug-train set.
type SelectResult struct {
	Manifest string
	Size     int
	// Precision is the share of selected images from the error domain; nil
	// when the pool carries no ground truth.
	Precision *float64
	// Duplicates and Leaks count the images the guards dropped.
	Duplicates int
	Leaks      int
	Seconds    float64
	// Note says what the selection could not do as asked: a global
	// budget or a threshold that reaches past the neighbours the scan kept.
	Note string `json:",omitempty"`
	// Search is how long the guards' k-NN searches took (the bench counts
	// it as k-NN, not the rest of the activity).
	Search time.Duration `json:",omitempty"`
}

// SelectDebugTrain chooses a dcd method's pool images from the merged
// neighbours (runs/<id>/neighbors.arrow), as package selection does, and
// writes them, each once with its weak label and score, in pool-id order,
// to methods/<method>/selected.csv.
func (a *Activities) SelectDebugTrain(ctx context.Context, in SelectInput) (SelectResult, error) {
	start := time.Now()
	res := SelectResult{Manifest: MethodKey(in.Run, in.Method, "selected.csv")}
	// queries × scan_k neighbours (10^7 with a wide scan) are read,
	// ranked and written in one go.
	defer beating(ctx, func() []any { return nil })()
	key := RunKey(in.Run, "neighbors.arrow")
	f, err := store.OpenArrow(ctx, a.Bucket, key, a.Mem)
	if err != nil {
		return res, store.Classify(err, key)
	}
	defer f.Close()
	near := selection.New(in.Selection.K)
	for r := 0; r < f.NumRecords(); r++ {
		rec, err := f.Record(r)
		if err != nil {
			return res, fmt.Errorf("activities: %s: %w", key, err)
		}
		rank := rec.Column(1).(*array.Int32)
		i := 0
		forEachNeighbor(rec, func(q int32, c candidate) {
			near.Add(q, rank.Value(i), c.item, float64(c.Distance))
			i++
		})
	}
	chosen, note := near.Select(in.Selection, in.ScanK)
	if res.Note = note; note != "" {
		warn(ctx, note, "method", in.Method)
	}
	res.Size, res.Precision = len(chosen), selection.Precision(chosen, in.Selection.ErrorDomain)
	if err := a.writeSelection(ctx, res.Manifest, chosen); err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

var selectionHeader = []string{"uri", "label", "domain", "score", "pool_id", "version"}

// writeSelection writes a manifest (uri,label,domain,score,pool_id,version)
// that Plan reads like any other. The pool id, the image's position in the
// pool's listing, lets GatherSelection find its cached features; it is
// empty where unknown (a negative ID). The version is the pool's, so a
// selection's shards are cached under their images' content too.
func (a *Activities) writeSelection(ctx context.Context, key string, chosen []selection.Chosen) error {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write(selectionHeader)
	for _, c := range chosen {
		id := ""
		if c.Item.ID >= 0 {
			id = strconv.FormatInt(c.Item.ID, 10)
		}
		w.Write([]string{dataset.ManifestURI(c.Item.Key), c.Item.Label, c.Item.Domain, strconv.FormatFloat(c.Score, 'g', -1, 64), id, c.Item.Version})
	}
	w.Flush()
	return store.WriteAll(ctx, a.Bucket, key, buf.Bytes())
}

// manifestRow is one row of a manifest this package wrote.
type manifestRow struct {
	key, label, domain, version string
	score                       float64
	poolID                      int64 // -1 when the manifest does not say
}

// readManifest reads a manifest written by writeSelection.
func (a *Activities) readManifest(ctx context.Context, key string) ([]manifestRow, error) {
	data, err := store.ReadAll(ctx, a.Bucket, key)
	if err != nil {
		return nil, store.Classify(err, key)
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		return nil, invalid("manifest %s: %v", key, err)
	}
	col := func(name string) int { return slices.Index(header, name) }
	ui, li, di, si, pi, vi := col("uri"), col("label"), col("domain"), col("score"), col("pool_id"), col("version")
	if ui < 0 || li < 0 {
		return nil, invalid("manifest %s: header %q has no uri and label", key, header)
	}
	var rows []manifestRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, invalid("manifest %s: %v", key, err)
		}
		if max(ui, li) >= len(rec) {
			line, _ := r.FieldPos(0)
			return nil, invalid("manifest %s: line %d has %d fields, no %s: the file was changed since DCD wrote it", key, line, len(rec), header[max(ui, li)])
		}
		row := manifestRow{key: itemKeyOf(rec[ui]), label: rec[li], poolID: -1}
		if pi >= 0 && pi < len(rec) {
			if id, err := strconv.ParseInt(rec[pi], 10, 64); err == nil {
				row.poolID = id
			}
		}
		if di >= 0 && di < len(rec) {
			row.domain = rec[di]
		}
		if si >= 0 && si < len(rec) {
			row.score, _ = strconv.ParseFloat(rec[si], 64)
		}
		if vi >= 0 && vi < len(rec) {
			row.version = rec[vi]
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// itemKeyOf inverts dataset.ManifestURI.
func itemKeyOf(uri string) string {
	if store.IsURL(uri) {
		return uri
	}
	return strings.TrimPrefix(uri, "/")
}

// RandomInput is the random baseline's draw.
type RandomInput struct {
	Run         string
	Method      string
	PoolShards  int
	PoolImages  int
	N           int
	Seed        uint64
	ErrorDomain string
	// Similarity is the model the pool was scanned with: the draw is over
	// the images it embedded, as a dcd selection is. Without it (a pass
	// started before it was given), over every pool image.
	Similarity ModelRef
	// NoPoolRejects says the scan rejected no pool image: the draw is
	// over every one, and of a pool with a shard index only the shards
	// it falls in are read.
	NoPoolRejects bool
	// Classes, when set, are the classes retraining keeps rows of: the
	// draw takes as many images with a label among them as Reference (the
	// reference dcd method's debug-train manifest) holds, so that both
	// retrain on as many rows. Without them (passes started before), N
	// images whatever their labels.
	Classes   []string `json:",omitempty"`
	Reference string   `json:",omitempty"`
}

// SelectRandom draws N pool images uniformly without replacement, seeded,
// among those the pool scan embedded, and writes them like a selection
// (methods/<method>/debug_train.csv). An image the scan rejected would be
// rejected again when the draw is embedded, and the baseline trained on
// fewer images than dcd. It reads each pool shard's manifest and rejects
// once, counting the images each shard may give, and holds only the
// rejects, the counts and the draw, which then reads the manifests of the
// shards it falls in again; when the scan rejected nothing, only those
// (a draw of 10,000 from 10^9 images reads 10,000 of their 500,000).
//
// Given the classes, it draws as many images with a class's label as the
// reference holds, among those: retraining skips a row of another label,
// and dcd's images, near correctly labelled failures, are of the classes
// far more often than a uniform draw from a pool weakly labelled by a
// broader labeller. The draw is first made as without them; only when it
// holds an image of another label is it made again among the images of
// the classes, counted on a read of every shard's manifest (once).
func (a *Activities) SelectRandom(ctx context.Context, in RandomInput) (SelectResult, error) {
	start := time.Now()
	res := SelectResult{Manifest: MethodKey(in.Run, in.Method, "debug_train.csv")}
	keep := func(dataset.Item) bool { return true }
	want := in.N
	if len(in.Classes) > 0 {
		classes := dataset.NewClasses(in.Classes)
		keep = func(it dataset.Item) bool { return classes.Index(it.Label) >= 0 }
		if in.Reference != "" {
			ref, err := a.readManifest(ctx, in.Reference)
			if err != nil {
				return res, err
			}
			want = 0
			for _, r := range ref {
				if classes.Index(r.label) >= 0 {
					want++
				}
			}
			if want == 0 && len(ref) > 0 {
				// The row's size of 0 says nothing of why otherwise.
				res.Note = fmt.Sprintf("selection: none of the %d images dcd kept has a weak label that is a class of the target, so random drew none", len(ref))
			}
		}
	}
	// The rejects first, to know how many images the draw is among.
	eligible, kept := in.PoolImages, -1 // kept: eligible of the classes, when counted
	var eligiblePer, keptPer []int      // by shard, when counted
	rejected := make([]map[string]bool, in.PoolShards)
	if in.Similarity.Path != "" && !in.NoPoolRejects {
		type counted struct {
			eligible, kept int // images not rejected, and of those of the classes
			keys           map[string]bool
		}
		shards := ahead.Read(ctx, in.PoolShards, shardsAhead, func(ctx context.Context, i int) (counted, error) {
			shard, rejects, err := a.embeddedRejects(ctx, in.Run, Pool, i, in.Similarity.Spec)
			if err != nil {
				return counted{}, err
			}
			r := counted{keys: map[string]bool{}}
			for _, rj := range rejects {
				r.keys[rj.URI] = true
			}
			for _, it := range shard.Items {
				if !r.keys[it.Key] {
					r.eligible++
					if keep(it) {
						r.kept++
					}
				}
			}
			return r, nil
		}, nil)
		eligible, kept = 0, 0
		eligiblePer, keptPer = make([]int, in.PoolShards), make([]int, in.PoolShards)
		for i := range in.PoolShards {
			sh, err := shards.Next()
			if err != nil {
				shards.Stop()
				return res, err
			}
			rejected[i], eligible, kept = sh.keys, eligible+sh.eligible, kept+sh.kept
			eligiblePer[i], keptPer[i] = sh.eligible, sh.kept
			heartbeat(ctx, i)
		}
		shards.Stop()
	}
	var index *ShardIndex // with no rejects, the draw's positions are pool ids
	if in.NoPoolRejects {
		ix, indexed, err := a.readShardIndex(ctx, in.Run)
		if err != nil {
			return res, err
		}
		if indexed && ix.numbers(in.PoolShards, in.PoolImages) {
			index = &ix
		}
	}
	rng := rand.New(rand.NewPCG(in.Seed, 0x7a4d0))
	var chosen []selection.Chosen
	if kept < 0 || kept == eligible {
		draw := sample(rng, eligible, min(want, eligible))
		picked := false
		if index != nil {
			var err error
			if chosen, picked, err = a.drawnByID(ctx, in.Run, *index, draw); err != nil {
				return res, err
			}
		}
		if !picked {
			var err error
			if chosen, err = a.drawnInOrder(ctx, in, rejected, draw, nil, eligiblePer); err != nil {
				return res, err
			}
		}
	}
	if slices.ContainsFunc(chosen, func(s selection.Chosen) bool { return !keep(s.Item) }) || kept >= 0 && kept < eligible {
		if kept < 0 {
			var err error
			if keptPer, err = a.countKept(ctx, in, keep); err != nil {
				return res, err
			}
			kept = 0
			for _, n := range keptPer {
				kept += n
			}
		}
		var err error
		if chosen, err = a.drawnInOrder(ctx, in, rejected, sample(rng, kept, min(want, kept)), keep, keptPer); err != nil {
			return res, err
		}
	}
	res.Size, res.Precision = len(chosen), selection.Precision(chosen, in.ErrorDomain)
	if err := a.writeSelection(ctx, res.Manifest, chosen); err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// countKept counts each pool shard's images that keep keeps (no image
// rejected: the rejects are read where any was).
func (a *Activities) countKept(ctx context.Context, in RandomInput, keep func(dataset.Item) bool) ([]int, error) {
	shards := ahead.Read(ctx, in.PoolShards, shardsAhead, func(ctx context.Context, i int) (*dataset.Shard, error) {
		return a.readShard(ctx, ShardKey(in.Run, Pool, i))
	}, nil)
	defer shards.Stop()
	per := make([]int, in.PoolShards)
	for i := range in.PoolShards {
		shard, err := shards.Next()
		if err != nil {
			return nil, err
		}
		for _, it := range shard.Items {
			if keep(it) {
				per[i]++
			}
		}
		heartbeat(ctx, i)
	}
	return per, nil
}

// drawnInOrder goes through the pool shards in order for the images at
// the draw's positions (increasing) among those not rejected, and kept by
// keep (nil: all). per, when counted, is how many such images each shard
// holds: only the shards the draw falls in are read (a draw of 10,000
// reads at most 10,000 shards of a pool's 500,000, not each a second time).
func (a *Activities) drawnInOrder(ctx context.Context, in RandomInput, rejected []map[string]bool, draw []int, keep func(dataset.Item) bool, per []int) ([]selection.Chosen, error) {
	// The shards to read, and the position of each one's first image.
	var read, first []int
	if per == nil {
		read = make([]int, in.PoolShards)
		for i := range read {
			read[i] = i
		}
	} else {
		pos, d := 0, 0
		for i, n := range per {
			if d < len(draw) && draw[d] < pos+n {
				read, first = append(read, i), append(first, pos)
				for d < len(draw) && draw[d] < pos+n {
					d++
				}
			}
			pos += n
		}
	}
	var chosen []selection.Chosen
	pos := 0
	shards := ahead.Read(ctx, len(read), shardsAhead, func(ctx context.Context, k int) (*dataset.Shard, error) {
		return a.readShard(ctx, ShardKey(in.Run, Pool, read[k]))
	}, nil)
	defer shards.Stop()
	for k := 0; k < len(read) && len(draw) > 0; k++ {
		shard, err := shards.Next()
		if err != nil {
			return nil, err
		}
		i := read[k]
		if first != nil {
			pos = first[k]
		}
		for _, it := range shard.Items {
			if rejected[i][it.Key] || keep != nil && !keep(it) {
				continue
			}
			if len(draw) > 0 && draw[0] == pos {
				chosen = append(chosen, selection.Chosen{Item: it})
				draw = draw[1:]
			}
			pos++
		}
		heartbeat(ctx, i)
	}
	return chosen, nil
}

// drawnByID reads the pool images with the ids drawn (increasing) from the
// shards that hold them, found by the run's shard index. A shard that does
// not hold the id the index puts in it (an index left by another plan of
// the run) returns false: the draw is then found in order instead.
func (a *Activities) drawnByID(ctx context.Context, run string, index ShardIndex, ids []int) ([]selection.Chosen, bool, error) {
	var holding []int // shards, each once, in order
	for _, id := range ids {
		if s := index.shardOf(int64(id)); len(holding) == 0 || holding[len(holding)-1] != s {
			holding = append(holding, s)
		}
	}
	shards := ahead.Read(ctx, len(holding), shardsAhead, func(ctx context.Context, i int) (*dataset.Shard, error) {
		return a.readShard(ctx, ShardKey(run, Pool, holding[i]))
	}, nil)
	defer shards.Stop()
	chosen := make([]selection.Chosen, 0, len(ids))
	for i, s := range holding {
		shard, err := shards.Next()
		if err != nil {
			return nil, false, err
		}
		for len(ids) > 0 && index.shardOf(int64(ids[0])) == s {
			j := int64(ids[0]) - index.FirstIDs[s]
			if j >= int64(len(shard.Items)) || shard.Items[j].ID != int64(ids[0]) {
				warn(ctx, "pool shard index not used: the random draw reads the shards in order", "shard", ShardKey(run, Pool, s), "id", ids[0])
				return nil, false, nil
			}
			chosen = append(chosen, selection.Chosen{Item: shard.Items[j]})
			ids = ids[1:]
		}
		heartbeat(ctx, i)
	}
	return chosen, true, nil
}

// sample returns n distinct integers of [0, total) in increasing order
// (Floyd's algorithm: n draws, whatever total).
func sample(rng *rand.Rand, total, n int) []int {
	seen := make(map[int]bool, n)
	out := make([]int, 0, n)
	for j := total - n; j < total; j++ {
		t := rng.IntN(j + 1)
		if seen[t] {
			t = j
		}
		seen[t] = true
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// GuardInput is a dcd selection to clean before training on it.
type GuardInput struct {
	Run    string
	Method string
	// Selected is the selection's manifest; Dataset and Shards are the
	// same images planned and embedded with Model.
	Selected string
	Dataset  string
	Shards   int
	Model    ModelRef // the target: column "features"
	// TestShards and HeldoutShards are the evaluation sets to guard.
	TestShards    int
	HeldoutShards int
	// Dedupe and Leakage are relative squared distances; ≤ 0 turns the
	// guard off.
	Dedupe      float64
	Leakage     float64
	ErrorDomain string
	// Classes, when set, are the classes retraining keeps rows of: of a
	// close pair, an image with a class's label stays before one whose
	// label is none (retraining would skip it, and lose both).
	Classes []string `json:",omitempty"`
}

// Dropped is one image a guard removed (methods/<method>/dropped.csv).
type Dropped struct {
	Key    string  `json:"key"`
	Reason string  `json:"reason"` // "duplicate" or "leak"
	Of     string  `json:"of"`     // the image it is a near-copy of
	Rel    float64 `json:"rel"`    // relative squared distance
}

// GuardSelection drops, in the target's feature space, selected images
// that are near-copies of a test or E_heldout image (training on them would
// inflate the evaluation), then images that are near-duplicates of a
// better-ranked selected image (given the classes, one with a class's
// label ranks before one without). Distances are relative: ‖a−b‖² over the
// mean squared distance between two evaluation images (twice the total
// variance of the test and E_heldout features), so the thresholds Leakage
// and Dedupe do not depend on the model's feature scale. It writes the
// cleaned set to methods/<method>/debug_train.csv and what it dropped, with
// the image each copies, to methods/<method>/dropped.csv. The selection's
// features are held in memory (queries × k rows); test and E_heldout stream
// shard by shard through the k-NN kernel.
func (a *Activities) GuardSelection(ctx context.Context, in GuardInput) (SelectResult, error) {
	start := time.Now()
	res := SelectResult{Manifest: MethodKey(in.Run, in.Method, "debug_train.csv")}
	var evalSets *setReads
	if in.Leakage > 0 || in.Dedupe > 0 {
		// Test's and E_heldout's features, read while the selection's are.
		evalSets = a.readSets(ctx, in.Run, []shardSet{{Test, in.TestShards}, {ErrorHeldout, in.HeldoutShards}}, in.Model, "features")
		defer evalSets.stop()
	}
	rows, err := a.readManifest(ctx, in.Selected)
	if err != nil {
		return res, err
	}
	score := map[string]float64{}
	for _, r := range rows {
		score[r.key] = r.score
	}
	// The selection's target features; images that did not embed have
	// none and are dropped by retraining anyway.
	var items []dataset.Item
	var feats []float32
	dim := 0
	err = a.eachShard(ctx, in.Run, in.Dataset, in.Shards, in.Model, "features", func(_ int, s loadedShard) error {
		if len(s.items) > 0 {
			dim = s.mat.Dim
		}
		items = append(items, s.items...)
		feats = append(feats, s.mat.Data...)
		return nil
	})
	if err != nil {
		return res, err
	}
	drop := map[int]Dropped{}
	if len(items) == 0 || (in.Leakage <= 0 && in.Dedupe <= 0) {
		return a.writeGuarded(ctx, in, res, start, rows, items, drop)
	}
	s, err := a.knn()
	if err != nil {
		return res, err
	}
	// One pass over test and E_heldout: each selected image's nearest
	// evaluation image, and the evaluation set's spread, the scale of
	// every relative distance.
	nearest := make([]Dropped, len(items))
	for i := range nearest {
		nearest[i].Rel = math.Inf(1)
	}
	// search is the searcher's TopK, timed into res.Search, beating
	// meanwhile: it may wait on the worker's other searches for their
	// memory (another guard's minute-long dedupe), then take a minute.
	search := func(q []float32, m int, pool []float32, ids []int64, k int) ([][]knn.Neighbor, error) {
		defer beating(ctx, func() []any { return nil })()
		searched := time.Now()
		defer func() { res.Search += time.Since(searched) }()
		return s.TopK(q, m, pool, ids, dim, k)
	}
	sum, sumSq := make([]float64, dim), make([]float64, dim)
	var n int
	names := []string{Test, ErrorHeldout}
	err = evalSets.each(func(set, i int, l loadedShard) error {
		ds := names[set]
		its, m := l.items, l.mat
		if len(its) == 0 {
			return nil
		}
		if m.Dim != dim {
			return invalid("target model gives %d values per image for %s but %d for the selection", m.Dim, ShardKey(in.Run, ds, i), dim)
		}
		for j := range its {
			for c, v := range m.Row(j) {
				sum[c] += float64(v)
				sumSq[c] += float64(v) * float64(v)
			}
		}
		n += len(its)
		if in.Leakage > 0 {
			ids := make([]int64, len(its))
			for j := range ids {
				ids[j] = int64(j)
			}
			top, err := search(feats, len(items), m.Data, ids, min(len(its), exactOf))
			if err != nil {
				return err
			}
			for q, list := range top {
				for _, nb := range list {
					if d := sqDist(feats, q, m.Data, nb.Index, dim); d < nearest[q].Rel {
						nearest[q] = Dropped{Key: items[q].Key, Reason: "leak", Of: its[nb.Index].Key, Rel: d}
					}
				}
			}
		}
		heartbeat(ctx, ds, i)
		return nil
	})
	if err != nil {
		return res, err
	}
	scale := 0.0
	for c := range sum {
		if n > 0 {
			mean := sum[c] / float64(n)
			scale += 2 * max(0, sumSq[c]/float64(n)-mean*mean)
		}
	}
	if !(scale > 0) {
		scale = 1
	}
	if in.Leakage > 0 {
		for q, d := range nearest {
			d.Rel /= scale
			if d.Rel <= in.Leakage {
				drop[q] = d
				res.Leaks++
			}
		}
	}

	if in.Dedupe > 0 && len(items) > 1 {
		// Each image against its nearest selected images; of a close
		// pair, the better ranked stays.
		ids := make([]int64, len(items))
		for i := range ids {
			ids[i] = int64(i)
		}
		// One search of every image against every other (a minute for
		// 30,000 images of 2,048 values on two cores), then again, k
		// doubled up to dedupeMaxK, of the images whose farthest
		// neighbour found is still a duplicate: in a cluster of more
		// copies than k, the best ranked may be none of a copy's k
		// nearest.
		k := min(len(items), 16)
		near, err := search(feats, len(items), feats, ids, k)
		if err != nil {
			return res, err
		}
		for k < min(len(items), dedupeMaxK) {
			var again []int
			for i, list := range near {
				if len(list) == k && sqDist(feats, i, feats, list[k-1].Index, dim)/scale <= in.Dedupe {
					again = append(again, i)
				}
			}
			if len(again) == 0 {
				break
			}
			k = min(2*k, len(items), dedupeMaxK)
			q := make([]float32, 0, len(again)*dim)
			for _, i := range again {
				q = append(q, feats[i*dim:(i+1)*dim]...)
			}
			more, err := search(q, len(again), feats, ids, k)
			if err != nil {
				return res, err
			}
			for j, i := range again {
				near[i] = more[j]
			}
		}
		defer beating(ctx, func() []any { return nil })() // the pairs' exact distances: n×k of them
		order := make([]int, len(items))
		for i := range order {
			order[i] = i
		}
		offClass := func(int) bool { return false }
		if len(in.Classes) > 0 {
			classes := dataset.NewClasses(in.Classes)
			offClass = func(i int) bool { return classes.Index(items[i].Label) < 0 }
		}
		slices.SortFunc(order, func(x, y int) int {
			return cmp.Or(compareBool(offClass(x), offClass(y)), cmp.Compare(score[items[x].Key], score[items[y].Key]), cmp.Compare(items[x].ID, items[y].ID))
		})
		kept := map[int]bool{}
		for _, i := range order {
			if _, gone := drop[i]; gone {
				continue
			}
			dup := false
			for _, nb := range near[i] {
				if nb.Index != i && kept[nb.Index] {
					if r := sqDist(feats, i, feats, nb.Index, dim) / scale; r <= in.Dedupe {
						drop[i] = Dropped{Key: items[i].Key, Reason: "duplicate", Of: items[nb.Index].Key, Rel: r}
						res.Duplicates++
						dup = true
						break
					}
				}
			}
			if !dup {
				kept[i] = true
			}
		}
	}
	return a.writeGuarded(ctx, in, res, start, rows, items, drop)
}

// dedupeMaxK bounds the neighbours the dedupe looks at an image: its
// search holds 24 bytes a neighbour an image searched (120 MB for 20,000
// copies of one blank image at 256), which doubling up to a cluster's
// size would make gigabytes. In a cluster of more near-copies than this,
// a few besides the best ranked may stay.
const dedupeMaxK = 256

// compareBool orders false before true.
func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// writeGuarded writes a guarded selection and what was dropped. A pool
// that lists an image twice has it twice in rows and items, in the same
// order: of a key's occurrences, those dropped are dropped, not all (the
// second as the first's duplicate would take the first with it).
func (a *Activities) writeGuarded(ctx context.Context, in GuardInput, res SelectResult, start time.Time, rows []manifestRow, items []dataset.Item, drop map[int]Dropped) (SelectResult, error) {
	type occurrence struct {
		key string
		n   int
	}
	dropped := map[occurrence]bool{}
	var list []Dropped
	seen := map[string]int{}
	for i, it := range items {
		if d, ok := drop[i]; ok {
			dropped[occurrence{it.Key, seen[it.Key]}] = true
			list = append(list, d)
		}
		seen[it.Key]++
	}
	clear(seen)
	var chosen []selection.Chosen
	for _, r := range rows {
		o := occurrence{r.key, seen[r.key]}
		seen[r.key]++
		if !dropped[o] {
			chosen = append(chosen, selection.Chosen{Item: dataset.Item{ID: r.poolID, Key: r.key, Label: r.label, Domain: r.domain, Version: r.version}, Score: r.score})
		}
	}
	res.Size, res.Precision = len(chosen), selection.Precision(chosen, in.ErrorDomain)
	if err := a.writeSelection(ctx, res.Manifest, chosen); err != nil {
		return res, err
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"uri", "reason", "of", "relative_distance"})
	for _, d := range list {
		w.Write([]string{dataset.ManifestURI(d.Key), d.Reason, dataset.ManifestURI(d.Of), strconv.FormatFloat(d.Rel, 'g', 6, 64)})
	}
	w.Flush()
	if err := store.WriteAll(ctx, a.Bucket, MethodKey(in.Run, in.Method, "dropped.csv"), buf.Bytes()); err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// exactOf is how many of each selected image's nearest evaluation images
// the leak guard measures again exactly (sqDist): the search's float32
// distances carry an error of a few units in the last place of the
// features' squared norms, which features with a large common offset
// make as large as the guards' thresholds, enough to misorder the
// nearest few.
const exactOf = 4

// sqDist is the squared distance between row i of a and row j of b, of
// dim values each, in float64: exact where the guards' thresholds need it.
func sqDist(a []float32, i int, b []float32, j, dim int) float64 {
	x, y := a[i*dim:(i+1)*dim], b[j*dim:(j+1)*dim]
	var d float64
	for k := range x {
		v := float64(x[k]) - float64(y[k])
		d += v * v
	}
	return d
}
