package workflows_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"maps"
	"math"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/internal/webdataset"
	"dcd/schemas"
	"dcd/workflows"
)

// runPack runs a pack to its end.
func runPack(t *testing.T, c client.Client, id string, in workflows.PackInput) (workflows.PackResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.PackWorkflow, in)
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.PackResult
	err = we.Get(ctx, &res)
	return res, err
}

// A pack run again over its output keeps the archives already whole and
// writes the rest, ending as one never interrupted; a pack that cannot
// succeed (another pack holds the output, a manifest row is bad) fails at
// once, saying why.
func TestPackRunAgainResumes(t *testing.T) {
	c, _ := devServer(t)
	ctx := context.Background()
	b, err := store.Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	startWorker(t, c, b)
	manifest := "uri,label\n"
	for i := range 7 {
		img := image.NewGray(image.Rect(0, 0, 4, 4))
		img.Pix[0] = uint8(i)
		var buf bytes.Buffer
		png.Encode(&buf, img)
		b.WriteAll(ctx, fmt.Sprintf("m/%d.png", i), buf.Bytes(), nil)
		manifest += fmt.Sprintf("%d.png,%d\n", i, i%2)
		if i == 3 {
			manifest += "gone.png,0\n"
		}
	}
	b.WriteAll(ctx, "m/list.csv", []byte(manifest), nil)
	stamp := time.Now().UTC().Format("150405.000")
	in := workflows.PackInput{Dataset: schemas.Dataset{Manifest: "m/list.csv"}, Out: "packed/", PerArchive: 3, Readers: 2, Window: 2}

	first, err := runPack(t, c, "pack-first-"+stamp, in)
	if err != nil {
		t.Fatal(err)
	}
	if first.Archives != 3 || first.Done != 3 || first.Packed != 7 || first.Skipped != 1 || first.Resumed != 0 ||
		first.FirstSkip == nil || first.FirstSkip.URI != "m/gone.png" || first.FirstSkip.Item != 4 {
		t.Fatalf("pack: %+v (first skip %+v); want 7 images in 3 archives, m/gone.png (item 4) skipped", first, first.FirstSkip)
	}
	if skipped, err := b.ReadAll(ctx, "packed/skipped.csv"); err != nil || !strings.Contains(string(skipped), "4,m/gone.png,") {
		t.Errorf("packed/skipped.csv: %q, %v", skipped, err)
	}
	tar1, _ := b.ReadAll(ctx, "packed/000001.tar")

	// Archive 1 was being written when its pack stopped.
	b.Delete(ctx, "packed/000001.sources.csv")
	b.WriteAll(ctx, "packed/000001.tar", []byte("torn"), nil)
	again, err := runPack(t, c, "pack-again-"+stamp, in)
	if err != nil {
		t.Fatal(err)
	}
	if again.Resumed != 2 || again.Packed != first.Packed || again.Bytes != first.Bytes || again.Skipped != 1 {
		t.Errorf("pack run again: %+v; want archives 0 and 2 resumed, and the first pack's counts %+v", again, first)
	}
	if tar, _ := b.ReadAll(ctx, "packed/000001.tar"); !bytes.Equal(tar, tar1) {
		t.Error("the archive rewritten differs from the one first written")
	}

	// More archives than a run of the workflow writes: the next run goes
	// on from where the last stopped.
	many := in
	many.Dataset.Manifest, many.Out, many.PerArchive, many.Readers, many.Window = "m/many.csv", "ones/", 1, 0, 0 // the defaults
	b.WriteAll(ctx, "m/many.csv", []byte("uri,label\n"+strings.Repeat("0.png,0\n", workflows.ShardsPerRun+1)), nil)
	if res, err := runPack(t, c, "pack-many-"+stamp, many); err != nil || res.Done != workflows.ShardsPerRun+1 || res.Packed != res.Done {
		t.Errorf("pack of %d archives: %+v, %v", workflows.ShardsPerRun+1, res, err)
	}
	if ok, _ := b.Exists(ctx, fmt.Sprintf("ones/%06d.tar", workflows.ShardsPerRun)); !ok {
		t.Error("the last archive, written by the second run, is missing")
	}

	other := in
	other.PerArchive = 2
	bad := in
	bad.Out = "bad/"
	b.WriteAll(ctx, "m/bad.csv", []byte("uri,label\n0.png\n"), nil)
	bad.Dataset.Manifest = "m/bad.csv"
	b.WriteAll(ctx, "m/empty.csv", []byte("uri,label\n"), nil)
	empty := bad
	empty.Dataset.Manifest = "m/empty.csv"
	for _, c1 := range []struct {
		in         workflows.PackInput
		kind, want string
	}{
		{other, "PackRefused", "empty prefix"},
		{bad, "InvalidInput", "m/bad.csv"},
		{empty, "InvalidInput", "no images"},
	} {
		_, err := runPack(t, c, "pack-refused-"+stamp+"-"+c1.want, c1.in)
		var ae *temporal.ApplicationError
		if !errors.As(err, &ae) || ae.Type() != c1.kind || !strings.Contains(err.Error(), c1.want) {
			t.Errorf("pack %+v: %v; want a %s error naming %q", c1.in, err, c1.kind, c1.want)
		}
	}
	// The bad manifest, corrected, packs into the same output.
	bad.Dataset.Manifest = "m/list.csv"
	if res, err := runPack(t, c, "pack-corrected-"+stamp, bad); err != nil || res.Packed != first.Packed {
		t.Errorf("pack into bad/ with the manifest corrected: %+v, %v", res, err)
	}
}

// A pack's plan that fails as a store that is down does goes on, in
// Temporal's retry, from the shards it wrote before the failure: none of
// them is written twice, and the pack ends whole.
func TestPackPlanRetryGoesOn(t *testing.T) {
	c, _ := devServer(t)
	ctx := context.Background()
	b, _ := fileBucket(t)
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 4, 4)))
	b.WriteAll(ctx, "m/0.png", buf.Bytes(), nil)
	const images, per, failAt = 300, 10, 15
	b.WriteAll(ctx, "m/list.csv", []byte("uri,label\n"+strings.Repeat("0.png,0\n", images)), nil)
	id := "pack-plan-retried-" + time.Now().UTC().Format("150405.000")
	var mu sync.Mutex
	written, failed := map[string]int{}, false
	// Shard 15's first write fails, once the shards before it are in
	// storage and the plan has heartbeated, as one that ran a while has.
	fail := func() bool {
		mu.Lock()
		defer mu.Unlock()
		first := !failed
		failed = true
		return first
	}
	startWorker(t, c, storetest.Hooked(b, &storetest.Hooks{BeforeWrite: func(_ context.Context, key string) error {
		if key == activities.ShardKey(id, activities.PackShards, failAt) && fail() {
			for i := 0; i < failAt; i++ {
				for ok, _ := b.Exists(ctx, activities.ShardKey(id, activities.PackShards, i)); !ok; ok, _ = b.Exists(ctx, activities.ShardKey(id, activities.PackShards, i)) {
					time.Sleep(time.Millisecond)
				}
			}
			time.Sleep(time.Second)
			return fmt.Errorf("store down: %w", context.DeadlineExceeded)
		}
		mu.Lock()
		defer mu.Unlock()
		written[key]++
		return nil
	}}))
	res, err := runPack(t, c, id, workflows.PackInput{Dataset: schemas.Dataset{Manifest: "m/list.csv"}, Out: "packed/", PerArchive: per})
	if err != nil || res.Archives != images/per || res.Packed != images {
		t.Fatalf("pack: %+v, %v; want %d images in %d archives", res, err, images, images/per)
	}
	mu.Lock()
	defer mu.Unlock()
	if !failed {
		t.Fatal("the plan's write of shard 15 was never tried")
	}
	// Those after it, which the failed attempt may have written too (its
	// writes go 256 at once), are written again.
	for i := range images / per {
		if n := written[activities.ShardKey(id, activities.PackShards, i)]; n == 0 || i < failAt && n != 1 {
			t.Errorf("shard %d written %d times: the retry goes on from the %d shards written before the failure", i, n, failAt)
		}
	}
}

// A worker killed during a pack costs the archive it was writing: another
// worker writes it again, and the pack ends with the objects of one never
// interrupted.
func TestPackSurvivesKilledWorker(t *testing.T) {
	c, hostport := devServer(t)
	b, url := fileBucket(t)
	ctx := context.Background()
	const images, per = 4000, 100
	writeDigits(t, b, "digits/", images)
	bin := buildBinary(t, "dcd/worker")
	startProc := func() *workerProcess {
		return startWorkerProcess(t, bin, "-address", hostport, "-storage", url, "-queues", "cpu", "-concurrency", "1")
	}
	first := startProc()
	stamp := time.Now().UTC().Format("150405.000")
	in := workflows.PackInput{Dataset: schemas.Dataset{Prefix: "digits/"}, Out: "killed/", PerArchive: per, Readers: 1, Window: 1, Heartbeat: 2 * time.Second}
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "pack-killed-" + stamp, TaskQueue: workflows.CPUQueue}, workflows.PackWorkflow, in)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var p workflows.PackResult
		if v, err := c.QueryWorkflow(ctx, we.GetID(), "", workflows.ProgressQuery); err == nil && v.Get(&p) == nil && p.Done >= 3 {
			if p.Done == p.Archives {
				t.Fatalf("the pack ended before its worker could be killed: %+v", p)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pack wrote no 3 archives within a minute")
		}
	}
	first.kill()
	startProc()

	var killed workflows.PackResult
	if err := we.Get(ctx, &killed); err != nil {
		t.Fatal(err)
	}
	in.Out = "whole/"
	whole, err := runPack(t, c, "pack-whole-"+stamp, in)
	if err != nil {
		t.Fatal(err)
	}
	if killed.Packed != images || killed.Done != images/per || killed.Bytes != whole.Bytes {
		t.Errorf("the pack whose worker was killed: %+v; the one never interrupted: %+v", killed, whole)
	}
	read := func(prefix string) map[string]string {
		m := map[string]string{}
		it := b.List(&blob.ListOptions{Prefix: prefix})
		for {
			obj, err := it.Next(ctx)
			if err != nil {
				return m
			}
			data, _ := b.ReadAll(ctx, obj.Key)
			m[strings.TrimPrefix(obj.Key, prefix)] = string(data)
		}
	}
	if got, want := read("killed/"), read("whole/"); !maps.Equal(got, want) || len(want) != 2*images/per+1 {
		t.Errorf("the pack whose worker was killed holds %d objects, unlike the %d of one never interrupted", len(got), len(want))
	}
}

// A pool packed in WebDataset archives by `starter pack` is the same pool
// as its manifest: the pass embeds the archive members by byte range,
// reads each sample's label and domain from its .cls and .domain members,
// and selects the same images with the same scores, so the retrained model
// scores as it does from the manifest.
func TestWebDatasetPoolSelectsAsItsManifest(t *testing.T) {
	c, hostport := devServer(t)
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
	// Five archives, packed by the command a user runs.
	per := (len(items) + 4) / 5
	try := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // a pack that never runs is watched for ever
		defer cancel()
		cmd := exec.CommandContext(ctx, buildBinary(t, "dcd/starter"), args...)
		cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+hostport)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	starter := func(args ...string) string {
		t.Helper()
		out, err := try(args...)
		if err != nil {
			t.Fatalf("starter %q: %v\n%s", args, err, out)
		}
		return out
	}
	id := "pack-pool-" + time.Now().UTC().Format("150405.000")

	// Under an ID a pack into another output holds, the command refuses
	// rather than watch that pack and report it as its own.
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id + "-held", TaskQueue: "no-worker-polls-this"}, workflows.PackWorkflow,
		workflows.PackInput{Dataset: cfg.Data.Pool, Out: "elsewhere", PerArchive: per}); err != nil {
		t.Fatal(err)
	}
	defer c.TerminateWorkflow(ctx, id+"-held", "", "test over")
	if out, err := try("pack", "-manifest", cfg.Data.Pool.Manifest, "-per-archive", fmt.Sprint(per), "-id", id+"-held", "pool-wds"); err == nil || !strings.Contains(out, `into "elsewhere"`) {
		t.Errorf("starter pack under the ID of a pack into another output: %v\n%s", err, out)
	}
	// So does `starter run` under the ID of a pass running.
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id + "-pass", TaskQueue: "no-worker-polls-this"}, workflows.DebugPass, workflows.PassInput{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	defer c.TerminateWorkflow(ctx, id+"-pass", "", "test over")
	passFile := filepath.Join(t.TempDir(), "pass.json")
	data, _ := json.Marshal(cfg)
	if err := os.WriteFile(passFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := try("run", "-config", passFile, "-id", id+"-pass"); err == nil || !strings.Contains(out, "running already") {
		t.Errorf("starter run under the ID of a pass running: %v\n%s", err, out)
	}
	out := starter("pack", "-manifest", cfg.Data.Pool.Manifest, "-per-archive", fmt.Sprint(per), "-window", "3", "-id", id, "pool-wds")
	for _, want := range []string{fmt.Sprintf("packed %d images into 5 archives under pool-wds", len(items)), "webdataset: pool-wds"} {
		if !strings.Contains(out, want) {
			t.Errorf("starter pack's output lacks %q:\n%s", want, out)
		}
	}
	if out := starter("status", id); !strings.Contains(out, "Completed after") || !strings.Contains(out, fmt.Sprintf(": packed %d images into 5 archives, 0 skipped", len(items))) {
		t.Errorf("starter status of the pack: %s", out)
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
