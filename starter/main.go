// Command starter starts, watches and schedules DCD debug passes on
// Temporal, and runs a local development setup (`starter dev`) and the MNIST
// demo (`starter demo`).
//
// Global flags -address (env TEMPORAL_ADDRESS) and -namespace (env
// TEMPORAL_NAMESPACE) go before or after the command. Errors go to stderr
// as "starter: ..." with exit status 1, or 2 for a usage mistake or a bad
// config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	_ "time/tzdata" // -cron's CRON_TZ checked where the system has no zoneinfo

	"go.temporal.io/sdk/client"

	"dcd/internal/devserver"
)

// globals are the flags every command takes.
type globals struct {
	address   string
	namespace string
	// ui is the Temporal UI's URL (env TEMPORAL_UI_URL) for the links the
	// commands print; empty: the dev server's, beside address.
	ui string
}

func defaultGlobals() globals {
	return globals{
		address:   env("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
		namespace: env("TEMPORAL_NAMESPACE", "default"),
		ui:        env("TEMPORAL_UI_URL", ""),
	}
}

// command is one subcommand: its usage line and what it does with the
// arguments after its name.
type command struct {
	name  string
	args  string // synopsis after the name
	about string
	run   func(ctx context.Context, e *cli, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"run", runSynopsis, "start a debug pass; -wait: watch it, print results", cmdRun},
		{"status", "RUN", "show a pass's progress or how it ended", cmdStatus},
		{"result", resultSynopsis, "print a finished pass's results table or eval.json", cmdResult},
		{"cancel", "RUN", "cancel a pass", cmdCancel},
		{"report", reportSynopsis, "print a finished pass's report.html path, or serve it on localhost", cmdReport},
		{"train-head", trainHeadSynopsis, "DCD's own external trainer (retrain.trainer): embed, fit a head, write ONNX", cmdTrainHead},
		{"schedule create", createSynopsis, "run a pass on a schedule", nil},
		{"schedule update", updateSynopsis, "give a schedule a new config or timing", nil},
		{"schedule list", "", "list schedules", nil},
		{"schedule describe", "SCHED", "show next run times and recent passes", nil},
		{"schedule trigger", "SCHED", "start a scheduled pass now", nil},
		{"schedule pause", "[-note TEXT] SCHED", "stop starting passes (a running one goes on)", nil},
		{"schedule unpause", "[-note TEXT] SCHED", "start passes again from the next firing", nil},
		{"schedule delete", "SCHED", "delete a schedule (not its passes)", nil},
		{"schedule", "", "", cmdSchedule},
		{"pack", packSynopsis, "copy a dataset of one object per image into WebDataset archives, far faster to embed", cmdPack},
		{"dev", devSynopsis, "start (-stop: stop) a local dev server and worker", cmdDev},
		{"demo", demoSynopsis, "build the MNIST demo, run a pass on it", cmdDemo},
		{"bench", "[-json] [-quick] [-parts LIST] [...]", "measure embedding, k-NN and orchestration against their baselines", cmdBench},
		{"help", "", "show this text", nil},
	}
}

// cli is one invocation: its flags, output streams and Temporal client.
type cli struct {
	g      globals
	stdout io.Writer
	stderr io.Writer
	tty    bool // stdout is a terminal
	dial   func(globals) (client.Client, error)
	client client.Client
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr, isTerminal(os.Stdout))
	stop()
	os.Exit(code)
}

// realMain runs the command line args and returns the exit status.
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) int {
	e := &cli{g: defaultGlobals(), stdout: stdout, stderr: stderr, tty: tty, dial: dialFunc}
	defer func() {
		if e.client != nil {
			e.client.Close()
		}
	}()
	err := e.dispatch(ctx, args)
	return e.exitCode(err)
}

func (e *cli) dispatch(ctx context.Context, args []string) error {
	fs := e.flags("starter")
	fs.Usage = func() { e.usage(e.stderr) }
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	args = fs.Args()
	if len(args) == 0 {
		e.usage(e.stderr)
		return &exitError{code: 2}
	}
	name, rest := args[0], args[1:]
	if name == "help" || name == "-h" || name == "--help" {
		e.usage(e.stdout)
		return nil
	}
	for _, c := range commands {
		if c.name == name && c.run != nil {
			return c.run(ctx, e, rest)
		}
	}
	return usageErrorf("unknown command %q (`starter help` lists them)", name)
}

// usage writes the usage text: every command's synopsis, and what it does
// on the line below, as the flag package lists flags, so that a long
// synopsis (bench's) does not push every description past a terminal's
// width.
func (e *cli) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: starter [-address HOST:PORT] [-namespace NS] COMMAND [flags] [args]\n\nCommands:\n")
	for _, c := range commands {
		if c.about == "" {
			continue
		}
		syn := c.name
		if c.args != "" {
			syn += " " + c.args
		}
		fmt.Fprintf(w, "  %s\n    \t%s\n", syn, c.about)
	}
	fmt.Fprintf(w, "\nGlobal flags (before or after the command):\n"+
		"  -address HOST:PORT  Temporal frontend (env TEMPORAL_ADDRESS; now %s)\n"+
		"  -namespace NS       Temporal namespace (env TEMPORAL_NAMESPACE; now %s)\n"+
		"Printed links go to the Temporal UI (env TEMPORAL_UI_URL; default the dev server's,\n"+
		"beside -address).\n"+
		"\n`starter COMMAND -h` lists a command's flags.\n", e.g.address, e.g.namespace)
}

// flags returns a FlagSet for a command, with the global flags on it so
// that they may come after the command's name too.
func (e *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&e.g.address, "address", e.g.address, "Temporal frontend host:port (env TEMPORAL_ADDRESS)")
	fs.StringVar(&e.g.namespace, "namespace", e.g.namespace, "Temporal namespace (env TEMPORAL_NAMESPACE)")
	return fs
}

// devStorage sets storage, a -storage flag of fs left to its default
// (DCD_STORAGE unset), to the bucket of the dev worker this checkout runs
// against the same server (`starter dev -storage URL`): the files of the
// passes it ran are there, not in .dcd/storage.
func (e *cli) devStorage(fs *flag.FlagSet, storage *string) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "storage" })
	if set || os.Getenv("DCD_STORAGE") != "" {
		return
	}
	if s, ok := devserver.WorkerStorage(stateDir, e.g.address, e.g.namespace); ok {
		*storage = s
	}
}

// parse parses flags interspersed with positional arguments ("status RUN
// -address X" as well as "status -address X RUN") and returns the
// positional ones.
func parse(fs *flag.FlagSet, synopsis string, args []string) ([]string, error) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: starter %s %s\n", fs.Name(), synopsis)
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, flagErr(err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// oneArg parses a command that takes one positional argument.
func oneArg(fs *flag.FlagSet, synopsis, what string, args []string) (string, error) {
	pos, err := parse(fs, synopsis, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", usageErrorf("%s: want one %s, got %d arguments (usage: starter %s %s)", fs.Name(), what, len(pos), fs.Name(), synopsis)
	}
	return pos[0], nil
}

// Client dials Temporal once per invocation.
func (e *cli) Client() (client.Client, error) {
	if e.client == nil {
		c, err := e.dial(e.g)
		if err != nil {
			return nil, err
		}
		e.client = c
	}
	return e.client, nil
}

// dialFunc is replaced in tests.
var dialFunc = dial

func dial(g globals) (client.Client, error) {
	c, err := client.Dial(client.Options{HostPort: g.address, Namespace: g.namespace, Logger: devserver.QuietLogger()})
	if err != nil {
		hint := ""
		if !devserver.Reachable(g.address) {
			hint = " (nothing listens there: start a local server with `starter dev`, or set -address / TEMPORAL_ADDRESS)"
		}
		return nil, fmt.Errorf("connect to Temporal at %s: %w%s", g.address, err, hint)
	}
	return c, nil
}

// exitError carries an exit status; a nil err means the message was
// printed already.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// flagErr turns a flag package error, which the FlagSet has printed with
// the usage, into exit status 2 (0 for -h).
func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return &exitError{code: 0}
	}
	return &exitError{code: 2}
}

func (e *cli) exitCode(err error) int {
	if err == nil {
		return 0
	}
	code := 1
	var x *exitError
	if errors.As(err, &x) {
		code = x.code
		if x.err == nil {
			return code
		}
	}
	msg := strings.TrimPrefix(err.Error(), "starter: ")
	fmt.Fprintf(e.stderr, "starter: %s\n", msg)
	return code
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
