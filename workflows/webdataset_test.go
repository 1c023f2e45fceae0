package workflows_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"maps"
	"math"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// A pool packed in WebDataset archives (by dataset.Source.Pack, which
// `starter pack` runs) is the same pool as its manifest:
// the pass embeds the archive members by byte range, reads each sample's
// label and domain from its .cls and .domain members, and selects the same
// images with the same scores, so the retrained model scores as it does
// from the manifest.
func TestWebDatasetPoolSelectsAsItsManifest(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()

	var items []dataset.Item
	if err := dataset.Walk(ctx, b, cfg.Data.Pool, func(it dataset.Item) error {
		items = append(items, it)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Five archives, packed as `starter pack` packs them.
	per := (len(items) + 4) / 5
	res, err := dataset.Source{Bucket: b}.Pack(ctx, cfg.Data.Pool, "pool-wds", dataset.PackOptions{PerArchive: per})
	if err != nil {
		t.Fatal(err)
	}
	if res.Images != len(items) || len(res.Archives) != 5 {
		t.Fatalf("packed %d of %d images into %d archives, want all into 5 (skipped: %v)", res.Images, len(items), len(res.Archives), res.Skipped)
	}
	packed := cfg
	packed.Data.Pool = schemas.Dataset{WebDataset: "pool-wds/"}

	stamp := time.Now().UTC().Format("150405.000")
	want, err := runPass(t, c, "manifest-pool-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := runPass(t, c, "webdataset-pool-"+stamp, packed)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rejects != 0 {
		t.Errorf("%d pool images rejected from the archives", got.Rejects)
	}

	// The selections, as pool positions and scores, in order.
	index := map[string]int{}
	for i, it := range items {
		index[dataset.ManifestURI(it.Key)] = i
	}
	wantSel := selection(t, b, want.DebugTrain.Manifest, func(uri string) int { return index[uri] })
	gotSel := selection(t, b, got.DebugTrain.Manifest, func(uri string) int {
		m, ok := webdataset.ParseKey(strings.TrimPrefix(uri, "/"))
		var i int
		if _, err := fmt.Sscanf(m.Name, "%09d.png", &i); !ok || err != nil {
			t.Fatalf("selected %q: not a member of the packed pool", uri)
		}
		return i
	})
	if len(wantSel) == 0 || !slices.Equal(gotSel, wantSel) {
		i := 0
		for i < min(len(gotSel), len(wantSel)) && gotSel[i] == wantSel[i] {
			i++
		}
		var at []int
		for _, p := range append(gotSel[i:min(i+3, len(gotSel))], wantSel[i:min(i+3, len(wantSel))]...) {
			at = append(at, p.Index)
		}
		t.Fatalf("the packed pool selects %d images, the manifest %d; first picks:\n%v\n%v\nfirst difference at pick %d:\n%v\n%v\n%s", len(gotSel), len(wantSel), firstPicks(gotSel), firstPicks(wantSel), i, gotSel[i:min(i+3, len(gotSel))], wantSel[i:min(i+3, len(wantSel))],
			compareFeatures(t, b, items, at))
	}
	g, w := method(t, got.Eval, schemas.MethodDCD), method(t, want.Eval, schemas.MethodDCD)
	if g.SelectionPrecision == nil || w.SelectionPrecision == nil || *g.SelectionPrecision != *w.SelectionPrecision {
		t.Errorf("selection precision %v from the archives' .domain members, %v from the manifest", g.SelectionPrecision, w.SelectionPrecision)
	}
	// Rows reach the trainer in another shard order; the sums round alike
	// to within a test image or two.
	if math.Abs(g.HeldoutAccuracy-w.HeldoutAccuracy) > 0.002 || math.Abs(g.TestAccuracy-w.TestAccuracy) > 0.002 {
		t.Errorf("dcd from the archives: test %.4f, E_heldout %.4f; from the manifest %.4f, %.4f", g.TestAccuracy, g.HeldoutAccuracy, w.TestAccuracy, w.HeldoutAccuracy)
	}
}

// pick is one selected pool image: its position in the pool and score.
type pick struct {
	Index int
	Label string
	Score string
}

// selection reads a debug-train manifest (uri,label,domain,score) as picks.
func selection(t *testing.T, b *blob.Bucket, key string, index func(uri string) int) []pick {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(data)).ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("%s: %v", key, err)
	}
	var out []pick
	for _, r := range recs[1:] {
		out = append(out, pick{index(r[0]), r[1], r[3]})
	}
	return out
}

func firstPicks(p []pick) []pick { return p[:min(len(p), 5)] }

// compareFeatures says, for the pool images at the given positions,
// whether each feature folder (a model spec) holds the same values for the
// image embedded from the manifest and from its archive: when the
// selections differ, it tells a difference in embedding from one in
// selecting.
func compareFeatures(t *testing.T, b *blob.Bucket, items []dataset.Item, positions []int) string {
	ctx := context.Background()
	type both struct{ manifest, archive []float32 }
	rows := map[string]*both{} // by folder and position
	for _, obj := range featureFiles(t, b) {
		m, err := features.Load(ctx, b, obj.Key, "features", memory.NewGoAllocator())
		if err != nil {
			continue
		}
		for r, uri := range m.URIs {
			for _, i := range positions {
				id := fmt.Sprintf("%s, pool image %d", path.Dir(obj.Key), i)
				if rows[id] == nil {
					rows[id] = &both{}
				}
				switch {
				case uri == items[i].Key:
					rows[id].manifest = m.Row(r)
				case strings.Contains(uri, fmt.Sprintf("#pool/%06d.png@", i)):
					rows[id].archive = m.Row(r)
				}
			}
		}
	}
	var out strings.Builder
	for _, id := range slices.Sorted(maps.Keys(rows)) {
		r := rows[id]
		switch {
		case r.manifest == nil && r.archive == nil:
		case r.manifest == nil || r.archive == nil:
			fmt.Fprintf(&out, "%s: features from the manifest %v, from the archive %v\n", id, r.manifest != nil, r.archive != nil)
		default:
			diff := 0.0
			for j := range r.manifest {
				diff = max(diff, math.Abs(float64(r.manifest[j]-r.archive[j])))
			}
			fmt.Fprintf(&out, "%s: largest difference between the manifest's and the archive's features %g\n", id, diff)
		}
	}
	return out.String()
}
