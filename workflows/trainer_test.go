package workflows_test

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"dcd/activities"
	"dcd/internal/onnx"
	"dcd/schemas"
	"dcd/workflows"
)

// The external-trainer path, end to end: the pass runs `starter
// train-head` (the project's own trainer) on the train queue, which embeds
// the images itself, fits the head and writes one ONNX model; the pass then
// embeds test and E_heldout with that model and scores its outputs. It
// does as well as the built-in recipe on the same selection (the same
// features, rows and optimiser), and its log is in storage.
func TestExternalTrainer(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorkerOn(t, c, b, world.url, workflows.CPUQueue, workflows.GPUQueue, workflows.TrainQueue)
	bin := buildBinary(t, "dcd/starter")

	builtin, err := runPass(t, c, "builtin-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Both methods' trainers at once, spooling into one -work folder (a
	// disk large enough for them), which they leave empty.
	work := t.TempDir()
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodTrainOnly, schemas.MethodDCD}
	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{bin, "train-head", "-storage", "{storage}", "-job", "{job}",
		"-train", "{train}", "-debug", "{debug_train}", "-out", "{model}", "-work", work, "-threads", "2"}}
	res, err := runPass(t, c, "trainer-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(work); len(left) > 0 {
		t.Errorf("the trainers left %d files in their -work folder, as %s", len(left), left[0].Name())
	}
	// Its progress counted the shards the trainers' models embedded again
	// from the start: done, it is all of them.
	if v, err := c.QueryWorkflow(context.Background(), res.RunID, "", workflows.ProgressQuery); err != nil {
		t.Error(err)
	} else {
		var p workflows.Progress
		if err := v.Get(&p); err != nil || p.ShardsDone != p.ShardsTotal {
			t.Errorf("progress at the end: %d of %d shards (%v)", p.ShardsDone, p.ShardsTotal, err)
		}
	}
	ext, in := method(t, res.Eval, schemas.MethodDCD), method(t, builtin.Eval, schemas.MethodDCD)
	none := method(t, res.Eval, schemas.MethodNone)
	t.Logf("external trainer: test %.4f E_heldout %.4f; built-in: test %.4f E_heldout %.4f", ext.TestAccuracy, ext.HeldoutAccuracy, in.TestAccuracy, in.HeldoutAccuracy)
	if ext.Model != activities.MethodKey(res.RunID, schemas.MethodDCD, "model.onnx") || ext.Log == "" {
		t.Errorf("model %q, log %q", ext.Model, ext.Log)
	}
	if model, err := b.ReadAll(context.Background(), ext.Model); err != nil {
		t.Error(err)
	} else if meta, err := onnx.Metadata(model); err != nil || meta["input"] != "image" || !strings.Contains(meta["preprocess"], `"height":28`) {
		t.Errorf("the trainer's model's metadata %v (%v) does not say how to make its input", meta, err)
	}
	if gain := ext.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.25 {
		t.Errorf("the trainer's model gains %.3f on E_heldout, want ≥ 0.25", gain)
	}
	for _, d := range []float64{ext.TestAccuracy - in.TestAccuracy, ext.HeldoutAccuracy - in.HeldoutAccuracy} {
		if d > 0.005 || d < -0.005 {
			t.Errorf("the trainer's model scores %.4f/%.4f, the built-in head %.4f/%.4f: want the same within half a point",
				ext.TestAccuracy, ext.HeldoutAccuracy, in.TestAccuracy, in.HeldoutAccuracy)
			break
		}
	}
	log, err := b.ReadAll(context.Background(), ext.Log)
	if err != nil || !strings.Contains(string(log), "wrote "+ext.Model) || !strings.Contains(string(log), "embedded") {
		t.Errorf("trainer log (%v):\n%s", err, log)
	}
}

// Cancelling a pass kills its trainer command: the process is gone once
// the pass reports cancelled, and the log in storage says why it stopped.
// A trainer that fails fails the pass with the end of its log.
func TestExternalTrainerCancelAndFailure(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorkerOn(t, c, b, world.url, workflows.CPUQueue, workflows.GPUQueue, workflows.TrainQueue)
	ctx := context.Background()
	cfg.Timeouts.Heartbeat = schemas.Duration(2 * time.Second)
	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"sh", "-c", "echo trainer pid $$; exec sleep 600", "{model}"}}
	// Two methods retrain at once: the pass ends when both trainers have.
	compare := cfg.Compare
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodDCD, schemas.MethodRandom}
	id := "trainer-cancel-" + time.Now().UTC().Format("150405.000")
	we, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	deadline := time.Now().Add(5 * time.Minute)
	for _, m := range cfg.Compare[1:] {
		for pids[m] == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s's trainer did not start within 5 minutes", m)
			}
			if data, err := b.ReadAll(ctx, activities.MethodKey(id, m, "train.log")); err == nil {
				if match := regexp.MustCompile(`trainer pid (\d+)`).FindSubmatch(data); match != nil {
					pids[m], _ = strconv.Atoi(string(match[1]))
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err := syscall.Kill(pids[m], 0); err != nil {
			t.Fatalf("%s's trainer %d is not running: %v", m, pids[m], err)
		}
	}
	if err := c.CancelWorkflow(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	err = we.Get(ctx, nil)
	var canceled *temporal.CanceledError
	if !errors.As(err, &canceled) {
		t.Fatalf("pass ended with %v, want cancelled", err)
	}
	for m, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s's trainer %d still exists after the pass was cancelled (kill -0: %v)", m, pid, err)
		}
		if data, _ := b.ReadAll(ctx, activities.MethodKey(id, m, "train.log")); !strings.Contains(string(data), "trainer stopped") {
			t.Errorf("%s's log does not say the trainer was stopped:\n%s", m, data)
		}
	}
	cfg.Compare = compare

	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"sh", "-c", "echo loading data; echo out of memory >&2; exit 3", "{model}"}}
	_, err = runPass(t, c, "trainer-fail-"+time.Now().UTC().Format("150405.000"), cfg)
	if err == nil || !strings.Contains(err.Error(), "exited with status 3") || !strings.Contains(err.Error(), "out of memory") {
		t.Errorf("failing trainer: pass error %v, want the exit status and the log's end", err)
	}

	// An earlier pass under the same ID left its models: not this one's.
	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"sh", "-c", "echo done", "{model}"}}
	id = "trainer-nomodel-" + time.Now().UTC().Format("150405.000")
	for _, m := range cfg.Compare {
		b.WriteAll(ctx, activities.MethodKey(id, m, "model.onnx"), []byte("an earlier pass's model"), nil)
	}
	_, err = runPass(t, c, id, cfg)
	if err == nil || !strings.Contains(err.Error(), "exited 0 but wrote no model at") {
		t.Errorf("trainer that wrote nothing: pass error %v, want it said", err)
	}
}
