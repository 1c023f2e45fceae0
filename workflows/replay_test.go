package workflows_test

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/schemas"
	"dcd/workflows"
)

// Passes, pool chains and packs recorded by earlier code replay with this
// code: a running pass survives an upgrade of its workers only if every
// change to the workflows since is versioned (workflow.GetVersion). Each
// file of testdata/histories is named by the commit that recorded it
// (TestRecordHistories); record new ones before changing a workflow.
func TestOlderHistoriesReplay(t *testing.T) {
	files, err := filepath.Glob("testdata/histories/*.json.gz")
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded histories (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			h := readHistory(t, f)
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(workflows.DebugPass)
			r.RegisterWorkflow(workflows.ShardsWorkflow)
			r.RegisterWorkflow(workflows.PackWorkflow)
			// The pass's ID names its children: replay it under the ID
			// they were started with.
			var id string
			for _, ev := range h.Events {
				if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
					id, _, _ = strings.Cut(a.GetWorkflowId(), "/")
					break
				}
			}
			opts := worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: id}}
			if err := r.ReplayWorkflowHistoryWithOptions(quietLogger(), h, opts); err != nil {
				t.Errorf("%s (%d events) does not replay: %v", f, len(h.Events), err)
			}
		})
	}
}

func readHistory(t *testing.T, name string) *historypb.History {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	var h historypb.History
	if err := (temporalproto.CustomJSONUnmarshalOptions{}).Unmarshal(data, &h); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &h
}

// TestRecordHistories runs three small passes and a pack with this code and
// writes their histories to $DCD_RECORD_HISTORIES/<prefix>-*.json.gz for
// TestOlderHistoriesReplay, <prefix> being $DCD_RECORD_PREFIX (the commit,
// say). The passes compare every method but all_pool. The first's shards
// are small, so that train and test run in child chains and the pool,
// E_sample and E_heldout in the pass itself; the second's are tiny, so
// that its pool has more than ShardsPerRun and is scanned in a chain,
// which continues as new: that chain's last run is recorded. The third
// is the second again, a recurring pass whose pool chain finds every
// shard cached: its last run is recorded too, and its train chain's (no
// search), which finds them cached as well. The pack writes the pool
// into six archives. Then the paths of failures (a method's, a chain's)
// and of cancellations (a pass cancelled in its comparison, a pool chain
// cancelled alone).
func TestRecordHistories(t *testing.T) {
	dir, prefix := os.Getenv("DCD_RECORD_HISTORIES"), os.Getenv("DCD_RECORD_PREFIX")
	if dir == "" || prefix == "" {
		t.Skip("set DCD_RECORD_HISTORIES (a folder) and DCD_RECORD_PREFIX (the commit) to record")
	}
	c, _ := devServer(t)
	b, _ := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()
	cfg, err := demo.Build(ctx, b, mnist.DefaultDir(), demo.Options{Train: 4000, Pool: 6000, ErrorShare: 0.05, Test: 1000, Heldout: 500, Prefix: "record/"}, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Shards.Size = 500
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodTrainOnly, schemas.MethodRandom, schemas.MethodDCD}
	if _, err := runPass(t, c, "record-pass", cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Shards.Size = 10
	if _, err := runPass(t, c, "record-chained", cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := runPass(t, c, "record-cached", cfg); err != nil { // the same pool: a recurring scan
		t.Fatal(err)
	}
	if _, err := runPack(t, c, "record-pack", workflows.PackInput{Dataset: cfg.Data.Pool, Out: "record/packed/", PerArchive: 1000}); err != nil {
		t.Fatal(err)
	}
	// The paths only a failure takes: a method that fails ends the
	// comparison at once (a trainer exiting 3)...
	startWorkerOn(t, c, b, "", workflows.TrainQueue)
	failing := cfg
	failing.Retrain.Trainer = &schemas.Trainer{Command: []string{"sh", "-c", "exit 3", "{model}"}}
	if _, err := runPass(t, c, "record-failed-method", failing); err == nil {
		t.Fatal("a pass whose trainer exits 3 succeeded")
	}
	// ...and a chain that fails stops the others: the pool, in shards of
	// 4 (two chains of up to 1,000), opens with 40 images none of which
	// can be read (a shard of them fails for good).
	manifest, err := b.ReadAll(ctx, cfg.Data.Pool.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(manifest), "\n")
	var broken strings.Builder
	broken.WriteString(lines[0])
	for i := range 40 {
		fmt.Fprintf(&broken, "missing/%02d.png,0,clean\n", i)
	}
	broken.WriteString(strings.Join(lines[1:], ""))
	failing = cfg
	failing.Data.Pool.Manifest = path.Join(path.Dir(cfg.Data.Pool.Manifest), "broken.csv")
	if err := b.WriteAll(ctx, failing.Data.Pool.Manifest, []byte(broken.String()), nil); err != nil {
		t.Fatal(err)
	}
	failing.Shards.Size = 4
	if _, err := runPass(t, c, "record-failed-chain", failing); err == nil {
		t.Fatal("a pass with a shard of unreadable images succeeded")
	}
	// The paths a cancellation takes: a pass cancelled while its methods
	// retrain waits for them...
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "record-cancelled", TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	waitPhase(t, c, "record-cancelled", "compare")
	if err := c.CancelWorkflow(ctx, "record-cancelled", ""); err != nil {
		t.Fatal(err)
	}
	if err := we.Get(ctx, nil); !temporal.IsCanceledError(err) {
		t.Fatalf("the pass cancelled in its comparison ended %v", err)
	}
	// ...and a pool chain cancelled alone fails its pass: the pool in
	// another order, so that its shards are new and the scan lasts.
	reversed := []string{lines[0]}
	for i := len(lines) - 1; i > 0; i-- {
		if lines[i] != "" {
			reversed = append(reversed, lines[i])
		}
	}
	alone := cfg
	alone.Data.Pool.Manifest = path.Join(path.Dir(cfg.Data.Pool.Manifest), "reversed.csv")
	if err := b.WriteAll(ctx, alone.Data.Pool.Manifest, []byte(strings.Join(reversed, "")), nil); err != nil {
		t.Fatal(err)
	}
	we, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "record-cancelled-alone", TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: alone})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.DescribeWorkflowExecution(ctx, "record-cancelled-alone/pool/0", ""); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no pool chain two minutes into the pass")
		}
	}
	if err := c.CancelWorkflow(ctx, "record-cancelled-alone/pool/0", ""); err != nil {
		t.Fatal(err)
	}
	if err := we.Get(ctx, nil); err == nil || temporal.IsCanceledError(err) {
		t.Fatalf("the pass whose pool chain was cancelled ended %v, want failed", err)
	}
	for id, name := range map[string]string{"record-pass": "pass", "record-chained/pool/0": "pool-chain", "record-cached/pool/0": "cached-scan", "record-cached/train/0": "cached-train", "record-pack": "pack",
		"record-failed-method": "failed-method", "record-failed-chain": "failed-chain", "record-cancelled": "cancelled", "record-cancelled-alone": "cancelled-alone"} {
		it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		var h historypb.History
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			h.Events = append(h.Events, ev)
		}
		data, err := temporalproto.CustomJSONMarshalOptions{}.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, prefix+"-"+name+".json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		z, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
		if _, err := z.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d events", id, len(h.Events))
	}
}
