package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"dcd/workflows"
)

// A schedule fires a pass on its own, and the pass completes with the same
// outcome as one started by hand. `starter schedule pause` stops the
// firings (a trigger while the pass runs is refused, saying why), and
// `unpause` starts them again.
func TestScheduleFiresPass(t *testing.T) {
	c, hostport := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()
	starter := buildBinary(t, "dcd/starter") // before the pass starts: it is checked while the pass runs

	id := "nightly-" + time.Now().UTC().Format("150405")
	h, err := c.ScheduleClient().Create(ctx, workflows.PassSchedule(id,
		client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: 2 * time.Second}}}, cfg, false))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete(ctx)

	var passID string
	for deadline := time.Now().Add(time.Minute); passID == ""; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the schedule did not fire within a minute")
		}
		d, err := h.Describe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Info.RecentActions) > 0 {
			passID = d.Info.RecentActions[0].StartWorkflowResult.WorkflowID
		}
	}
	run := func(args ...string) ([]byte, error) {
		cmd := exec.Command(starter, append([]string{"schedule"}, args...)...)
		cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+hostport)
		return cmd.CombinedOutput()
	}
	if out, err := run("pause", "-note", "test done", id); err != nil {
		t.Fatalf("schedule pause: %v\n%s", err, out)
	}
	if d, err := h.Describe(ctx); err != nil || !d.Schedule.State.Paused || d.Schedule.State.Note != "test done" {
		t.Fatalf("after schedule pause: %+v, %v; want paused with the note", d.Schedule.State, err)
	}
	// A trigger while the pass runs would be skipped: the command says so.
	out, err := run("trigger", id)
	if d, derr := c.DescribeWorkflowExecution(ctx, passID, ""); derr != nil {
		t.Fatal(derr)
	} else if d.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		if err == nil || !strings.Contains(string(out), passID+" is still running") {
			t.Errorf("schedule trigger while %s runs: %v\n%s", passID, err, out)
		}
	} else {
		t.Logf("the pass ended before the trigger could be checked against it")
	}
	var res workflows.PassResult
	if err := c.GetWorkflow(ctx, passID, "").Get(ctx, &res); err != nil {
		t.Fatalf("scheduled pass %s: %v", passID, err)
	}
	// Unpaused, it fires again: a second pass starts after the first.
	if out, err := run("unpause", "-note", "fixed", id); err != nil || !strings.Contains(string(out), "active again") {
		t.Fatalf("schedule unpause: %v\n%s", err, out)
	}
	if out, err := run("describe", id); err != nil || !strings.Contains(string(out), "active: fixed") {
		t.Errorf("schedule describe after unpause -note fixed: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		d, err := h.Describe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Schedule.State.Paused {
			t.Fatalf("still paused after unpause: %+v", d.Schedule.State)
		}
		if n := len(d.Info.RecentActions); n > 0 && d.Info.RecentActions[n-1].StartWorkflowResult.WorkflowID != passID {
			// Not waited for: the tests after this one have the worker.
			second := d.Info.RecentActions[n-1].StartWorkflowResult.WorkflowID
			defer c.TerminateWorkflow(ctx, second, "", "test done")
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the unpaused schedule did not fire within a minute")
		}
	}
	if err := h.Pause(ctx, client.SchedulePauseOptions{}); err != nil {
		t.Fatal(err)
	}
	none, dcd := method(t, res.Eval, "none"), method(t, res.Eval, "dcd")
	if dcd.HeldoutAccuracy-none.HeldoutAccuracy < 0.25 || res.DebugTrain.Size == 0 {
		t.Errorf("scheduled pass result %+v", res.Eval)
	}
}

// `starter schedule update` gives a schedule a new config and timing in
// place: its next passes run the new config (the schedule holds a copy,
// not the file), and a cron's CRON_TZ zone is what `describe` names.
func TestScheduleUpdate(t *testing.T) {
	c, hostport := devServer(t)
	_, cfg := demoWorld(t)
	ctx := context.Background()
	starter := buildBinary(t, "dcd/starter")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(starter, append([]string{"schedule"}, args...)...)
		cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+hostport)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dir := t.TempDir()
	writeConfig := func(name string) string {
		cfg := cfg
		cfg.Name = name
		data, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name+".json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	id := "update-" + time.Now().UTC().Format("150405")
	out, err := run("create", "-paused", "-config", writeConfig("first"), "-id", id, "-cron", "CRON_TZ=Europe/Paris 0 2 * * *")
	if err != nil || !strings.Contains(out, "Europe/Paris") {
		t.Fatalf("schedule create in Paris time: %v\n%s", err, out)
	}
	defer c.ScheduleClient().GetHandle(ctx, id).Delete(ctx)
	out, err = run("update", "-config", writeConfig("second"), "-every", "36h", id)
	if err != nil || !strings.Contains(out, `config "second"`) || !strings.Contains(out, "every 36h") || !strings.Contains(out, "(UTC)") {
		t.Fatalf("schedule update: %v\n%s", err, out)
	}
	d, err := c.ScheduleClient().GetHandle(ctx, id).Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	act := d.Schedule.Action.(*client.ScheduleWorkflowAction)
	var in workflows.PassInput
	if p, ok := act.Args[0].(*commonpb.Payload); !ok || converter.GetDefaultDataConverter().FromPayload(p, &in) != nil ||
		in.Config.Name != "second" || !d.Schedule.State.Paused {
		t.Errorf("after update: action %+v (config %q), paused %v; want the second config, still paused", act, in.Config.Name, d.Schedule.State.Paused)
	}
	for _, bad := range [][]string{{"update", id}, {"update", "-cron", "CRON_TZ=Mars/Olympus 0 2 * * *", id}, {"update", "-every", "1h", "no-such-schedule"}} {
		if out, err := run(bad...); err == nil {
			t.Errorf("schedule %q: no error\n%s", bad, out)
		}
	}
	// A cron the server cannot read is a usage mistake (exit 2).
	var exit *exec.ExitError
	if out, err := run("update", "-cron", "0 25 * * *", id); !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Errorf("an hour 25: %v, want exit status 2\n%s", err, out)
	}

	// Another application's schedule in the namespace is not given a
	// pass's config.
	other := "other-" + id
	if _, err := c.ScheduleClient().Create(ctx, client.ScheduleOptions{ID: other, Paused: true,
		Spec:   client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: time.Hour}}},
		Action: &client.ScheduleWorkflowAction{ID: "backup", Workflow: "Backup", TaskQueue: "backups"}}); err != nil {
		t.Fatal(err)
	}
	defer c.ScheduleClient().GetHandle(ctx, other).Delete(ctx)
	if out, err := run("update", "-config", writeConfig("third"), other); err == nil || !strings.Contains(out, "does not start DCD passes") {
		t.Errorf("updating another application's schedule: %v\n%s", err, out)
	}
	if d, err := c.ScheduleClient().GetHandle(ctx, other).Describe(ctx); err != nil || len(d.Schedule.Action.(*client.ScheduleWorkflowAction).Args) != 0 {
		t.Errorf("another application's schedule was changed: %v", err)
	}
}
