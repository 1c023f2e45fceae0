package workflows_test

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// smallWorld is the demo at reduced size: enough blur images in the pool
// (480) for 100 queries to find, few enough for CI, and as rare in the pool
// (4%) as in the full demo (5%), so that random pool images find few of
// them and the baselines compare as they do there.
var smallWorld = demo.Options{Train: 10000, Pool: 12000, ErrorShare: 0.04, Test: 2000, Heldout: 1000}

var world struct {
	once   sync.Once
	bucket *blob.Bucket
	url    string
	cfg    schemas.Config
	err    error
}

// demoWorld builds the small demo world once per test binary, in a bucket
// shared by the tests that run passes over it.
func demoWorld(t *testing.T) (*blob.Bucket, schemas.Config) {
	t.Helper()
	world.once.Do(func() {
		dir, err := os.MkdirTemp("", "dcd-world")
		if err != nil {
			world.err = err
			return
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		world.url = "file://" + dir + "?create_dir=1"
		if world.bucket, world.err = store.Open(context.Background(), world.url); world.err != nil {
			return
		}
		if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
			world.err = err
			return
		}
		world.cfg, world.err = demo.Build(context.Background(), world.bucket, mnist.DefaultDir(), smallWorld, ortrun.Options{Threads: 2})
		// Tests compare the baselines only where they say so.
		world.cfg.Compare = []string{schemas.MethodNone, schemas.MethodDCD}
	})
	if world.err != nil {
		t.Fatalf("demo world: %v", world.err)
	}
	return world.bucket, world.cfg
}

func runPass(t *testing.T, c client.Client, id string, cfg schemas.Config) (workflows.PassResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.PassResult
	err = we.Get(ctx, &res)
	return res, err
}

func method(t *testing.T, ev activities.Eval, name string) activities.Method {
	t.Helper()
	for _, m := range ev.Methods {
		if m.Method == name {
			return m
		}
	}
	t.Fatalf("eval has no method %q: %+v", name, ev.Methods)
	return activities.Method{}
}

// The demo pass, end to end through the dev server, compares the methods
// of the paper's table on the same features and recipe: the targeted
// selection lifts E_heldout accuracy by 25 points or more and at least
// twice as much as as many random pool images, the whole noisy pool hurts
// clean test accuracy or gains less, and dcd keeps clean test accuracy
// within one point. The exported dcd model runs image → class in ONNX
// Runtime with the in-process head's predictions, and the report renders in
// Chromium. A second pass over the same pool embeds nothing again.
func TestDemoPassFixesTheFailure(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)

	cfg.Compare = schemas.DefaultCompare
	res, err := runPass(t, c, "demo-pass-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	writeTable(&sb, res.Eval)
	t.Logf("result:\n%s", sb.String())
	none, dcd := method(t, res.Eval, schemas.MethodNone), method(t, res.Eval, schemas.MethodDCD)
	random, allPool := method(t, res.Eval, schemas.MethodRandom), method(t, res.Eval, schemas.MethodAllPool)
	trainOnly := method(t, res.Eval, schemas.MethodTrainOnly)
	gain := func(m activities.Method) float64 { return m.HeldoutAccuracy - none.HeldoutAccuracy }
	if gain(dcd) < 0.25 {
		t.Errorf("E_heldout accuracy %.3f → %.3f: gain %.3f, want ≥ 0.25", none.HeldoutAccuracy, dcd.HeldoutAccuracy, gain(dcd))
	}
	if gain(dcd) < 2*gain(random) {
		t.Errorf("dcd gains %.3f on E_heldout, random %.3f: want dcd's at least twice random's", gain(dcd), gain(random))
	}
	if !(allPool.TestAccuracy < none.TestAccuracy || gain(allPool) < gain(dcd)) {
		t.Errorf("all_pool: test %.3f (before %.3f), E_heldout gain %.3f (dcd %.3f): want it to hurt test accuracy or gain less than dcd",
			allPool.TestAccuracy, none.TestAccuracy, gain(allPool), gain(dcd))
	}
	if drop := none.TestAccuracy - dcd.TestAccuracy; drop > 0.01 {
		t.Errorf("test accuracy %.3f → %.3f: drop %.3f, want ≤ 0.01", none.TestAccuracy, dcd.TestAccuracy, drop)
	}
	if dcd.SelectionPrecision == nil || *dcd.SelectionPrecision < 0.8 {
		t.Errorf("selection precision %v, want ≥ 0.8", dcd.SelectionPrecision)
	}
	if none.TestAccuracy < 0.9 {
		t.Errorf("the target model before the pass has test accuracy %.3f, want ≥ 0.9", none.TestAccuracy)
	}
	if random.DebugTrainSize != dcd.DebugTrainSize || allPool.DebugTrainSize < smallWorld.Pool || trainOnly.DebugTrainSize != 0 {
		t.Errorf("debug-train sizes: random %d, dcd %d, all_pool %d, train_only %d", random.DebugTrainSize, dcd.DebugTrainSize, allPool.DebugTrainSize, trainOnly.DebugTrainSize)
	}
	for _, m := range res.Eval.Methods {
		if len(m.TestPerClass) != len(cfg.Classes) || len(m.HeldoutPerClass) != len(cfg.Classes) || m.WallSeconds <= 0 {
			t.Errorf("%s: %d and %d per-class accuracies for %d classes, wall time %.3f s", m.Method, len(m.TestPerClass), len(m.HeldoutPerClass), len(cfg.Classes), m.WallSeconds)
		}
	}
	checkExport(t, b, cfg, res, dcd)

	// eval.json in storage holds the same numbers.
	data, err := b.ReadAll(context.Background(), res.EvalKey)
	if err != nil {
		t.Fatal(err)
	}
	var stored activities.Eval
	if err := json.Unmarshal(data, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.RunID != res.RunID || !sameMethod(method(t, stored, "dcd"), dcd) {
		t.Errorf("eval.json %+v differs from the pass result %+v", stored, res.Eval)
	}
	report, err := b.ReadAll(context.Background(), res.ReportKey)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, report, res.Eval)

	// A recurring pass finds every shard's features in the cache and so
	// selects the same images.
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodDCD}
	again, err := runPass(t, c, "demo-pass-again-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.DebugTrain.Size != res.DebugTrain.Size || !sameMethod(method(t, again.Eval, "dcd"), dcd) {
		t.Errorf("second pass differs: %+v vs %+v", again.Eval, res.Eval)
	}
	if again.Shards == 0 || again.CachedShards != again.Shards {
		t.Errorf("second pass embedded %d of %d shards again, want none", again.Shards-again.CachedShards, again.Shards)
	}
}

// sameMethod compares two rows of passes over the same data: the numbers,
// not the wall time or the run's file names.
func sameMethod(a, b activities.Method) bool {
	for _, m := range []*activities.Method{&a, &b} {
		m.WallSeconds, m.DebugTrain, m.Head, m.Model, m.Log = 0, "", "", "", ""
	}
	return reflect.DeepEqual(a, b)
}
