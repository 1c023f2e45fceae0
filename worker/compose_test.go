package main

import (
	"context"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"dcd/activities"
	"dcd/internal/compose"
	"dcd/internal/devserver"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/workflows"
)

// Every worker service of docker-compose.yml runs a command line that this
// binary's own flag definitions parse, sets only environment variables that
// its flags read (or storage credentials), points TEMPORAL_ADDRESS and
// DCD_STORAGE at services of the file, and together the workers poll both
// task queues; the gpu worker asks for CUDA and reserves NVIDIA GPUs.
func TestComposeWorkers(t *testing.T) {
	f, err := compose.Load("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	polled := map[string]bool{}
	workers := 0
	for name, s := range f.Services {
		if len(s.Command) == 0 || s.Command[0] != "worker" {
			continue
		}
		workers++
		// Docker kills a service 10 s after SIGTERM unless told: a
		// worker stopping lets its activities end within its grace.
		if g, err := time.ParseDuration(s.StopGracePeriod); err != nil || g < devserver.WorkerStopGrace {
			t.Errorf("service %s: stop_grace_period %q, want at least the worker's %s", name, s.StopGracePeriod, devserver.WorkerStopGrace)
		}
		if s.Build == nil || s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("service %s runs the worker but does not build it from the repository's Dockerfile", name)
		}
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o := defineFlags(fs)
		if err := fs.Parse(s.Command[1:]); err != nil {
			t.Errorf("service %s: worker %q: %v", name, s.Command[1:], err)
			continue
		}
		if fs.NArg() > 0 {
			t.Errorf("service %s: worker takes no arguments, got %q", name, fs.Args())
		}
		if err := o.check(fs); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		queues, err := taskQueues(o.queues)
		if err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		for _, q := range queues {
			polled[q] = true
		}
		accepted := compose.EnvNames(fs)
		for k := range s.Environment {
			if !accepted[k] && !compose.CredentialEnv(k) {
				t.Errorf("service %s sets %s, which the worker does not read (it reads %v and storage credentials)", name, k, keys(accepted))
			}
		}
		if addr, ok := s.Environment["TEMPORAL_ADDRESS"]; !ok {
			t.Errorf("service %s does not set TEMPORAL_ADDRESS: the worker would dial 127.0.0.1", name)
		} else if err := f.CheckAddress(name, "TEMPORAL_ADDRESS", addr); err != nil {
			t.Error(err)
		}
		if st, ok := s.Environment["DCD_STORAGE"]; !ok {
			t.Errorf("service %s does not set DCD_STORAGE: workers on several machines need a shared bucket", name)
		} else if err := f.CheckStorage(name, st); err != nil {
			t.Error(err)
		}
		gpu := len(s.Deploy.Resources.Reservations.Devices) > 0
		if (o.ep == "cuda") != gpu {
			t.Errorf("service %s: -ep %s but %d GPU reservations", name, o.ep, len(s.Deploy.Resources.Reservations.Devices))
		}
		if o.ep == "cuda" {
			d := s.Deploy.Resources.Reservations.Devices[0]
			if d.Driver != "nvidia" || !slices.Contains(d.Capabilities, "gpu") {
				t.Errorf("service %s: device reservation %+v, want driver nvidia with capability gpu", name, d)
			}
			if s.Build.Target != "runtime-gpu" {
				t.Errorf("service %s: -ep cuda on image target %q, want runtime-gpu (ONNX Runtime's GPU build)", name, s.Build.Target)
			}
		}
	}
	if workers < 2 {
		t.Errorf("%d worker services, want a cpu and a gpu worker", workers)
	}
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		if !polled[q] {
			t.Errorf("no worker service polls %s: passes would wait forever", q)
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// The check above would pass vacuously if flags lost their "(env NAME)"
// usage; make sure they have it.
func TestFlagsNameTheirEnvironment(t *testing.T) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	defineFlags(fs)
	env := compose.EnvNames(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(f.Usage, "(env ") {
			t.Errorf("flag -%s: usage %q names no environment variable", f.Name, f.Usage)
		}
	})
	for _, want := range []string{"TEMPORAL_ADDRESS", "DCD_STORAGE", "DCD_QUEUES", "DCD_EP"} {
		if !env[want] {
			t.Errorf("no flag reads %s", want)
		}
	}
}

// Settings the worker would start with and fail on later are refused.
func TestCheckOptions(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"-ep", "gpu"}, "", `"gpu"`},
		{[]string{"-concurrency", "-1"}, "", "-concurrency -1"},
		{nil, "-2", "DCD_CONCURRENCY=-2"},
		{[]string{"-concurrency", "-1"}, "2", "-concurrency -1"}, // the flag's, not the variable's
		{[]string{"-readers", "-1"}, "", "-readers -1"},
		{nil, "many", `DCD_CONCURRENCY="many"`},
		{[]string{"-queues", "gpu,cpu,gpu"}, "", `-queues gpu,cpu,gpu: queue "gpu" listed twice`},
		{[]string{"-queues", "cpu,tpu"}, "", `unknown queue "tpu"`},
		// 0 is the default, set or not (starter dev's workerDefaults).
		{[]string{"-concurrency", "0"}, "", ""},
		{nil, "0", ""},
		{nil, "", ""},
	} {
		t.Setenv("DCD_CONCURRENCY", c.env)
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		o := defineFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := o.check(fs)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%q, DCD_CONCURRENCY=%q: %v, want an error naming %s", c.args, c.env, err, c.want)
		}
	}
}

// A concurrency left to its default follows -ep (DCD_EP) on the gpu
// queue, which embeds, and is the CPU's on the others; one set by flag or
// environment holds for every queue.
func TestConcurrencyFollowsEP(t *testing.T) {
	cpu, cuda := activities.DefaultConcurrency("cpu"), activities.DefaultConcurrency("cuda")
	for _, c := range []struct {
		args         []string
		env, ep      string
		gpuQ, others int
	}{
		{nil, "", "", cpu, cpu},
		{[]string{"-ep", "cuda"}, "", "", cuda, cpu},
		{nil, "", "cuda", cuda, cpu},
		{[]string{"-ep", "cuda", "-concurrency", "3"}, "", "", 3, 3},
		{[]string{"-ep", "cuda"}, "5", "", 5, 5},
	} {
		t.Setenv("DCD_CONCURRENCY", c.env)
		t.Setenv("DCD_EP", c.ep)
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		o := defineFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if err := o.check(fs); err != nil {
			t.Fatal(err)
		}
		gpuQ, cpuQ, train := o.queueConcurrency(workflows.GPUQueue), o.queueConcurrency(workflows.CPUQueue), o.queueConcurrency(workflows.TrainQueue)
		if gpuQ != c.gpuQ || cpuQ != c.others || train != c.others {
			t.Errorf("%q, DCD_CONCURRENCY=%q, DCD_EP=%q: gpu %d, cpu %d, train %d at once; want %d, %d, %d",
				c.args, c.env, c.ep, gpuQ, cpuQ, train, c.gpuQ, c.others, c.others)
		}
	}
}

// A worker checks its bucket as it starts, on a real S3 server: one it
// may list passes, and one that is not there fails it, naming the store,
// rather than every activity it would take.
func TestCheckStorage(t *testing.T) {
	srv := storetest.S3Server(t)
	ctx := context.Background()
	there, err := srv.Bucket(ctx, "there")
	if err != nil {
		t.Fatal(err)
	}
	for url, want := range map[string]string{there: "", devserver.S3URL("typo", srv.Endpoint): "no such bucket"} {
		b, err := store.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		err = checkStorage(ctx, b, url)
		b.Close()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "s3://typo")) {
			t.Errorf("%s: %v; want %q", url, err, want)
		}
	}
	// Credentials the store refuses fail it too, saying where they came
	// from.
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	b, err := store.Open(ctx, there)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = checkStorage(ctx, b, there)
	if err == nil || !strings.Contains(err.Error(), "the worker's credentials were refused or not found, from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") {
		t.Errorf("a wrong secret key: %v, want the credentials and their source named", err)
	}
}
