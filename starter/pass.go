package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"dcd/activities"
	"dcd/internal/devserver"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// runArgs are `starter run`'s flags.
type runArgs struct {
	config  string
	id      string
	wait    bool
	storage string
	reread  bool
}

const runSynopsis = "-config FILE [-id RUNID] [-wait [-storage URL]] [-reread]"

func parseRun(e *cli, args []string) (runArgs, error) {
	var a runArgs
	fs := e.flags("run")
	fs.StringVar(&a.config, "config", "", "pass config, YAML or JSON (required)")
	fs.StringVar(&a.id, "id", "", "workflow ID of the pass (default <config name>-<UTC yyyymmdd-hhmmss>)")
	fs.BoolVar(&a.wait, "wait", false, "show progress until the pass ends, then its results")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL the workers use, to show where -wait's files are (env DCD_STORAGE)")
	fs.BoolVar(&a.reread, "reread", false, "read again the pool's and train's images that cached shards recorded as unreadable (once access to them is fixed)")
	pos, err := parse(fs, runSynopsis, args)
	if err != nil {
		return a, err
	}
	e.devStorage(fs, &a.storage)
	if len(pos) > 0 {
		return a, usageErrorf("run: unexpected argument %q (usage: starter run %s)", pos[0], runSynopsis)
	}
	if a.config == "" {
		return a, usageErrorf("run: -config FILE is required (usage: starter run %s)", runSynopsis)
	}
	if err := checkID("-id", a.id); err != nil {
		return a, err
	}
	if err := store.CheckURL(a.storage); err != nil {
		return a, usageErrorf("run: -storage: %v", err)
	}
	return a, nil
}

// checkID refuses a workflow ID that would not make a plain storage key:
// a pass's files are runs/<id>/..., and a "/" would nest them, a ".." climb
// out, a "%" or "#" be escaped on one store's write and not on another's
// read. Letters, digits and -_.: (a schedule's passes add a time) pass.
func checkID(flag, id string) error {
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return usageErrorf("%s %q: an ID may hold only letters, digits and - _ . :", flag, id)
		}
	}
	switch {
	case strings.HasPrefix(id, "."):
		return usageErrorf("%s %q: an ID may not start with '.'", flag, id)
	case strings.HasPrefix(id, "-"):
		// A flag's value may begin with '-' (-id -wait takes "-wait"),
		// but then status, cancel and result would read the ID as a flag.
		return usageErrorf("%s %q: an ID may not start with '-' (a flag given no value?)", flag, id)
	case len(id) > maxIDBytes:
		return usageErrorf("%s: an ID of %d bytes: at most %d (runs/<id>/ is one folder name, and a schedule's passes add a time)", flag, len(id), maxIDBytes)
	}
	return nil
}

// maxIDBytes bounds an ID: a file store's folder name holds 255 bytes, and
// a schedule's passes are named <schedule>-pass-<RFC 3339 time>.
const maxIDBytes = 200

func cmdRun(ctx context.Context, e *cli, args []string) error {
	a, err := parseRun(e, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(a.config)
	if err != nil {
		return err
	}
	id := a.id
	if id == "" {
		id = passID(cfg.Name, time.Now())
		if err := checkID("name (the pass's ID with a time)", id+"-99"); err != nil {
			return err
		}
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	in := workflows.PassInput{Config: cfg, Reread: a.reread}
	if a.id == "" {
		id, err = e.startFreshPass(ctx, c, in, id)
	} else {
		err = e.startPass(ctx, c, in, id)
	}
	if err != nil {
		return err
	}
	if !a.wait {
		e.warnNoWorkflowWorker(ctx, c, "pass")
		return nil
	}
	return e.waitAndReport(ctx, c, id, a.storage)
}

// loadConfig reads and checks a config file. A config that cannot be
// decoded or fails Validate exits with status 2.
func loadConfig(path string) (schemas.Config, error) {
	cfg, err := schemas.LoadConfig(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return cfg, err
		}
		return cfg, &exitError{code: 2, err: err}
	}
	if err := cmp.Or(cfg.Validate(), cfg.CheckUnused()); err != nil {
		return cfg, &exitError{code: 2, err: fmt.Errorf("%s: %w", path, err)}
	}
	return cfg, nil
}

// passID is a pass's default workflow ID.
func passID(name string, now time.Time) string {
	return name + "-" + now.UTC().Format("20060102-150405")
}

// workflowURL is a pass's page in the Temporal Web UI.
func workflowURL(g globals, id string) string {
	ui := strings.TrimSuffix(g.ui, "/")
	if ui == "" {
		ui = devserver.UIURL(g.address)
	}
	return ui + "/namespaces/" + url.PathEscape(g.namespace) + "/workflows/" + url.PathEscape(id)
}

// startPass starts DebugPass with the config only (no secrets) and prints
// its ID and UI link.
func (e *cli) startPass(ctx context.Context, c client.Client, in workflows.PassInput, id string) error {
	if st, err := describe(ctx, c, e.g, id); err == nil && st.status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		// Temporal takes an ID again once its run has closed, and the
		// pass writes where the one before did: say so, not silently.
		fmt.Fprintf(e.stderr, "warning: a pass %s ran before (%s): this one replaces its result, eval.json and report under runs/%s/ (another -id keeps them)\n",
			id, strings.ToLower(st.status.String()), id)
	}
	err := e.execute(ctx, c, in, id)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return fmt.Errorf("a pass with id %q is running already: watch it with `starter status %s`, or pick another -id", id, id)
	}
	return err
}

// startFreshPass starts a pass under base, or under base-2, base-3, …
// where a pass has had that ID: a default ID is the config's name and the
// time to the second, which two passes started in one second (a script, two
// users) share, and the second would replace the first's results. It
// returns the ID the pass got.
func (e *cli) startFreshPass(ctx context.Context, c client.Client, in workflows.PassInput, base string) (string, error) {
	for n := 1; n < 100; n++ {
		id := base
		if n > 1 {
			id = fmt.Sprintf("%s-%d", base, n)
		}
		_, err := c.DescribeWorkflowExecution(ctx, id, "")
		var nf *serviceerror.NotFound
		switch {
		case err == nil:
			continue // taken, running or closed
		case !errors.As(err, &nf):
			return "", fmt.Errorf("describe %s: %w", id, err)
		}
		err = e.execute(ctx, c, in, id)
		var started *serviceerror.WorkflowExecutionAlreadyStarted
		if errors.As(err, &started) {
			continue // taken since
		}
		return id, err
	}
	return "", fmt.Errorf("passes %s to %s-99 exist already: give the pass an -id", base, base)
}

// execute starts DebugPass under id and prints its ID and UI link.
func (e *cli) execute(ctx context.Context, c client.Client, in workflows.PassInput, id string) error {
	// Without WorkflowExecutionErrorWhenAlreadyStarted the SDK hands back
	// the pass running under id, and this config would be dropped unsaid.
	_, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue, WorkflowExecutionErrorWhenAlreadyStarted: true},
		workflows.DebugPass, in)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	switch {
	case errors.As(err, &started):
		return err
	case err != nil:
		return fmt.Errorf("start pass %s: %w", id, err)
	}
	fmt.Fprintf(e.stdout, "started pass %s\n  %s\n", id, workflowURL(e.g, id))
	return nil
}

// waitAndReport watches a pass to its end and prints its results; a pass
// that did not complete is an error.
func (e *cli) waitAndReport(ctx context.Context, c client.Client, id, storageURL string) error {
	res, err := e.watch(ctx, c, id)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout)
	writeResult(e.stdout, res, storageURL)
	return nil
}

// describeArg reads a command's one RUN argument and describes that pass.
func (e *cli) describeArg(ctx context.Context, name string, args []string) (client.Client, string, execStatus, error) {
	id, err := oneArg(e.flags(name), "RUN", "pass id", args)
	if err != nil {
		return nil, "", execStatus{}, err
	}
	c, err := e.Client()
	if err != nil {
		return nil, "", execStatus{}, err
	}
	st, err := describe(ctx, c, e.g, id)
	return c, id, st, err
}

func cmdStatus(ctx context.Context, e *cli, args []string) error {
	c, id, st, err := e.describeArg(ctx, "status", args)
	if err != nil {
		return err
	}
	if st.status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		progress, stuck := passProgress(c, id), passStuck(c, id, e.g)
		if st.pack {
			progress, stuck = packProgress(c, id), packStuck(c, id, e.g)
		}
		note := stuck(ctx, time.Now())
		line, err := progress(ctx, time.Now())
		switch {
		case err != nil && note != "":
			fmt.Fprintf(e.stdout, "%s: Running, its progress unknown: %s\n", id, note)
		case err != nil:
			// A worker polled its workflow queue lately (stuck would
			// say if none had), though it may since have died.
			what := "pass"
			if st.pack {
				what = "pack"
			}
			again := " (ask again shortly)"
			if workerGone(err) {
				again = ""
			}
			fmt.Fprintf(e.stdout, "%s: Running, its progress unknown: %s%s\n", id, unanswered(what, err, e.g.address), again)
		case note != "":
			fmt.Fprintf(e.stdout, "%s: %s | %s\n", id, line, note)
		default:
			fmt.Fprintf(e.stdout, "%s: %s\n", id, line)
		}
		return nil
	}
	fmt.Fprintln(e.stdout, closedLine(ctx, c, id, st))
	return nil
}

// execStatus is what DescribeWorkflowExecution says about a pass, or a
// pack (`starter pack`).
type execStatus struct {
	status enumspb.WorkflowExecutionStatus
	start  time.Time
	close  time.Time
	pack   bool
}

func describe(ctx context.Context, c client.Client, g globals, id string) (execStatus, error) {
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			return execStatus{}, fmt.Errorf("no pass %q in namespace %s at %s", id, g.namespace, g.address)
		}
		return execStatus{}, fmt.Errorf("describe %s: %w", id, err)
	}
	info := d.GetWorkflowExecutionInfo()
	st := execStatus{
		status: info.GetStatus(),
		start:  info.GetStartTime().AsTime(),
		close:  info.GetCloseTime().AsTime(),
		pack:   info.GetType().GetName() == "PackWorkflow",
	}
	// A pack continues as new every 400 archives: its start is its first
	// run's, not the last's.
	if first := info.GetFirstRunId(); first != "" && first != info.GetExecution().GetRunId() {
		if f, err := c.DescribeWorkflowExecution(ctx, id, first); err == nil {
			st.start = f.GetWorkflowExecutionInfo().GetStartTime().AsTime()
		}
	}
	return st, nil
}

// closedLine says how a closed pass ended, with the failure's message.
func closedLine(ctx context.Context, c client.Client, id string, st execStatus) string {
	took := st.close.Sub(st.start).Round(time.Second)
	line := fmt.Sprintf("%s: %s after %s", id, st.status, took)
	switch {
	case st.status == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED && st.pack:
		var res workflows.PackResult
		c.GetWorkflow(ctx, id, "").Get(ctx, &res)
		return line + fmt.Sprintf(": packed %d images into %d archives, %d skipped", res.Packed, res.Archives-res.Empty, res.Skipped)
	case st.status == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
		return line + fmt.Sprintf(" (results: starter result %s)", id)
	}
	if err := c.GetWorkflow(ctx, id, "").Get(ctx, nil); err != nil {
		line += ": " + failureMessage(err)
	}
	return line
}

// failureMessage is the useful part of a pass's error: the activity that
// failed, if one did, and the outermost message below Temporal's wrappers
// (the workflow's, the activity's, a child's): DCD's own, which names the
// field or file and quotes its cause. The causes below it travel too, as
// nested failures, but alone they lose that context ("exit status 3").
// Bad input that names its field or set ("config: …", "data.train: …")
// is not named after the step that found it, as a local activity's
// failure names none.
func failureMessage(err error) string {
	var act *temporal.ActivityError
	var app *temporal.ApplicationError
	if errors.As(err, &app) && app.Type() == activities.InvalidInput && (strings.HasPrefix(app.Message(), "config:") || strings.HasPrefix(app.Message(), "data.")) {
		return failureCause(err, true)
	}
	if errors.As(err, &act) && act.ActivityType() != nil {
		msg := "activity " + stepName(act.ActivityType().GetName(), act.ActivityID()) + ": " + failureCause(err, true)
		if act.RetryState() == enumspb.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED {
			// Said of its last try: that the others failed too is not.
			// (A pass's steps have timeouts.retry_for's tries, its
			// trainer 3, a pack's steps 10.)
			msg += " (it failed on every try it had)"
		}
		return msg
	}
	return failureCause(err, false)
}

// failureCause is the message of err's deepest cause that has one of its
// own; of an activity's timeout (activity), the setting that bounds it.
func failureCause(err error, activity bool) string {
	last := err
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e := e.(type) {
		case *temporal.ApplicationError:
			if e.Message() != "" {
				return e.Message()
			}
		case *temporal.TimeoutError:
			if activity {
				return activityTimeout(e)
			}
			return e.Error()
		case *temporal.CanceledError, *temporal.TerminatedError, *temporal.PanicError:
			return e.Error()
		}
		last = e
	}
	return last.Error()
}

// stepName is an activity's type, and the method whose step it is.
func stepName(activityType, activityID string) string {
	if m := workflows.StepMethod(activityID); m != "" {
		return activityType + " of " + m
	}
	return activityType
}

// activityTimeout says which limit an activity's last try ran into, by
// the config's name for it: the server's text ("activity StartToClose
// timeout (type: StartToClose)", twice) names neither.
func activityTimeout(e *temporal.TimeoutError) string {
	switch e.TimeoutType() {
	case enumspb.TIMEOUT_TYPE_START_TO_CLOSE:
		return "it ran past its time limit (a pass's timeouts.activity; raise it for steps this long)"
	case enumspb.TIMEOUT_TYPE_HEARTBEAT:
		return "it sent no heartbeat in time (a pass's timeouts.heartbeat): its worker died, hung or lost the server"
	case enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START:
		return "no worker took it in time (is one polling its task queue?)"
	}
	return e.Error()
}

// resultArgs are `starter result`'s flags.
type resultArgs struct {
	id      string
	json    bool
	storage string
}

const resultSynopsis = "[-json] [-storage URL] RUN"

func parseResult(e *cli, args []string) (resultArgs, error) {
	var a resultArgs
	fs := e.flags("result")
	fs.BoolVar(&a.json, "json", false, "print eval.json (the Eval) as indented JSON")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL the workers use, to show where the files are and read eval.json (env DCD_STORAGE)")
	id, err := oneArg(fs, resultSynopsis, "pass id", args)
	a.id = id
	e.devStorage(fs, &a.storage)
	if err == nil {
		if err := store.CheckURL(a.storage); err != nil {
			return a, usageErrorf("result: -storage: %v", err)
		}
	}
	return a, err
}

func cmdResult(ctx context.Context, e *cli, args []string) error {
	a, err := parseResult(e, args)
	if err != nil {
		return err
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	st, err := describe(ctx, c, e.g, a.id)
	if err != nil {
		return err
	}
	if st.pack {
		return fmt.Errorf("%s is a pack, not a pass: `starter status %s` says how it went", a.id, a.id)
	}
	if st.status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return fmt.Errorf("pass %s is still running: `starter status %s` shows how far it is", a.id, a.id)
	}
	var res workflows.PassResult
	if err := c.GetWorkflow(ctx, a.id, "").Get(ctx, &res); err != nil {
		ended := fmt.Errorf("pass %s %s: %s", a.id, strings.ToLower(st.status.String()), failureMessage(err))
		data, ev, ok, unread := finishedEval(ctx, a.storage, a.id, st.start)
		switch {
		case ok && a.json:
			fmt.Fprintf(e.stdout, "%s\n", bytes.TrimRight(data, "\n"))
		case ok:
			fmt.Fprintf(e.stdout, "%v\nthe methods that finished before %s failed:\n\n", ended, strings.Join(ev.Failed, ", "))
			writeResult(e.stdout, workflows.PassResult{RunID: a.id, Eval: ev, EvalKey: activities.RunKey(a.id, "eval.json")}, a.storage)
		case unread != nil && methodFailed(err):
			// A method failed, so the pass wrote the others' table: not
			// where this command looked.
			return fmt.Errorf("%w\n(the methods that finished before it are in %s, which could not be read from %s: -storage or DCD_STORAGE names the workers' bucket: %v)",
				ended, activities.RunKey(a.id, "eval.json"), redact.URL(a.storage), unread)
		}
		return ended
	}
	if a.json {
		if perClassLeftOut(res.Eval) {
			// The result left them to eval.json (a target of many
			// classes): print that file, which has them.
			// Without it, no output: JSON with its per-class lists
			// null is no shape eval.json has.
			data, err := readEval(ctx, a.storage, res.EvalKey)
			if err != nil {
				return fmt.Errorf("pass %s: its per-class accuracies are in %s, which could not be read from %s (-storage or DCD_STORAGE: the workers' bucket): %w",
					a.id, res.EvalKey, redact.URL(a.storage), err)
			}
			_, err = e.stdout.Write(data)
			return err
		}
		b, err := json.MarshalIndent(res.Eval, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s\n", b)
		return nil
	}
	writeResult(e.stdout, res, a.storage)
	return nil
}

// perClassLeftOut says whether a pass's result lacks the per-class
// accuracies its eval.json holds.
func perClassLeftOut(ev activities.Eval) bool {
	return len(ev.Classes) > 0 && len(ev.Methods) > 0 && ev.Methods[0].TestPerClass == nil
}

// finishedEval is the eval.json a failed pass wrote of the methods that
// finished before one failed, when storage has one of this run (started
// at start), not an earlier run's under the same ID.
// unread says why storage could not have the file: it could not be
// opened or read, or it has nothing of the pass, as a bucket other than
// the workers' has not; not an earlier run's file, a complete one, or
// none where the pass wrote others (no method had finished).
func finishedEval(ctx context.Context, storage, id string, start time.Time) (data []byte, ev activities.Eval, ok bool, unread error) {
	b, err := store.Open(ctx, storage)
	if err != nil {
		return nil, ev, false, err
	}
	defer b.Close()
	key := activities.RunKey(id, "eval.json")
	attrs, err := b.Attributes(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		if _, lerr := b.List(&blob.ListOptions{Prefix: activities.RunKey(id, "")}).Next(ctx); lerr == nil {
			return nil, ev, false, nil // the pass's folder is there: no method finished
		}
	}
	if err != nil {
		return nil, ev, false, err
	}
	if attrs.ModTime.Before(start) {
		return nil, ev, false, nil
	}
	if data, err = b.ReadAll(ctx, key); err != nil {
		return nil, ev, false, err
	}
	if json.Unmarshal(data, &ev) != nil || !ev.Incomplete {
		return nil, ev, false, nil
	}
	return data, ev, true, nil
}

// methodFailed says whether err, a pass's, is one of its methods' steps
// failing, after which the pass writes the others' eval.json.
func methodFailed(err error) bool {
	var act *temporal.ActivityError
	return errors.As(err, &act) && workflows.StepMethod(act.ActivityID()) != ""
}

func readEval(ctx context.Context, storage, key string) ([]byte, error) {
	if key == "" {
		return nil, errors.New("the result names no eval.json")
	}
	b, err := store.Open(ctx, storage)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return b.ReadAll(ctx, key)
}

func cmdCancel(ctx context.Context, e *cli, args []string) error {
	c, id, st, err := e.describeArg(ctx, "cancel", args)
	if err != nil {
		return err
	}
	if st.status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return fmt.Errorf("pass %s is not running: %s", id, st.status)
	}
	if err := c.CancelWorkflow(ctx, id, ""); err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			return fmt.Errorf("no running pass %q in namespace %s", id, e.g.namespace)
		}
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	fmt.Fprintf(e.stdout, "cancellation of %s requested; `starter status %s` shows when it has stopped\n", id, id)
	return nil
}
