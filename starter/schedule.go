package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"dcd/schemas"
	"dcd/workflows"
)

func cmdSchedule(ctx context.Context, e *cli, args []string) error {
	// Global flags may come between "schedule" and its subcommand too.
	if len(args) > 0 && args[0] != "-h" && args[0] != "-help" && args[0] != "--help" {
		fs := e.flags("schedule")
		if err := fs.Parse(args); err != nil {
			return flagErr(err)
		}
		args = fs.Args()
	}
	if len(args) == 0 {
		return usageErrorf("schedule: want create, update, list, describe, trigger, pause, unpause or delete")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "-h", "-help", "--help", "help":
		for _, c := range commands {
			if strings.HasPrefix(c.name, "schedule ") {
				fmt.Fprintln(e.stdout, strings.TrimSpace("starter "+c.name+" "+c.args))
			}
		}
		return nil
	case "create":
		return scheduleCreate(ctx, e, rest)
	case "update":
		return scheduleUpdate(ctx, e, rest)
	case "list":
		return scheduleList(ctx, e, rest)
	case "describe", "trigger", "pause", "unpause", "delete":
		fs := e.flags("schedule " + sub)
		synopsis := "SCHED"
		var note string
		if sub == "pause" || sub == "unpause" {
			synopsis = "[-note TEXT] SCHED"
			fs.StringVar(&note, "note", "", "why, shown by describe (default: who "+sub+"d it and when)")
		}
		id, err := oneArg(fs, synopsis, "schedule id", rest)
		if err != nil {
			return err
		}
		if note == "" && fs.Lookup("note") != nil { // who paused or unpaused it, and when
			note = sub + "d with starter schedule " + sub + " at " + time.Now().UTC().Format(time.RFC3339)
		}
		c, err := e.Client()
		if err != nil {
			return err
		}
		h := c.ScheduleClient().GetHandle(ctx, id)
		switch sub {
		case "describe":
			return scheduleDescribe(ctx, e, c, h)
		case "trigger":
			// The schedule skips a pass while one runs: say so instead
			// of "triggered" for a trigger that does nothing.
			d, err := h.Describe(ctx)
			if err != nil {
				return scheduleErr(e, id, "trigger", err)
			}
			if r := d.Info.RunningWorkflows; len(r) > 0 {
				return fmt.Errorf("schedule %s: pass %s is still running, and the schedule skips a pass while one runs; wait for it, or `starter cancel %s` first", id, r[0].WorkflowID, r[0].WorkflowID)
			}
			if err := h.Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
				return scheduleErr(e, id, "trigger", err)
			}
			fmt.Fprintf(e.stdout, "schedule %s triggered; `starter schedule describe %s` lists its passes\n", id, id)
			return nil
		case "pause":
			// Paused, the schedule starts no pass, and one that runs goes
			// on: the features it caches serve the next.
			if err := h.Pause(ctx, client.SchedulePauseOptions{Note: note}); err != nil {
				return scheduleErr(e, id, "pause", err)
			}
			fmt.Fprintf(e.stdout, "schedule %s paused; `starter schedule unpause %s` resumes it\n", id, id)
			return nil
		case "unpause":
			// Firings missed while paused are not made up for.
			if err := h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: note}); err != nil {
				return scheduleErr(e, id, "unpause", err)
			}
			fmt.Fprintf(e.stdout, "schedule %s active again\n", id)
			return scheduleDescribe(ctx, e, c, h)
		default:
			if err := h.Delete(ctx); err != nil {
				return scheduleErr(e, id, "delete", err)
			}
			fmt.Fprintf(e.stdout, "schedule %s deleted (passes it started are left alone)\n", id)
			return nil
		}
	}
	return usageErrorf("schedule: unknown subcommand %q (want create, update, list, describe, trigger, pause, unpause or delete)", sub)
}

func scheduleErr(e *cli, id, op string, err error) error {
	var nf *serviceerror.NotFound
	var bad *serviceerror.InvalidArgument
	switch {
	case errors.As(err, &nf):
		return fmt.Errorf("no schedule %q in namespace %s", id, e.g.namespace)
	case errors.As(err, &bad): // a spec the server refuses (a cron it cannot read): a usage mistake
		return &exitError{code: 2, err: fmt.Errorf("schedule %s: %s: %w", op, id, err)}
	}
	return fmt.Errorf("schedule %s: %s: %w", op, id, err)
}

// createArgs are `starter schedule create`'s flags.
type createArgs struct {
	config string
	id     string
	cron   string
	every  time.Duration
	paused bool
}

const createSynopsis = "-config FILE -id SCHED (-cron EXPR | -every DURATION) [-paused]"

func parseCreate(e *cli, args []string) (createArgs, error) {
	var a createArgs
	fs := e.flags("schedule create")
	fs.StringVar(&a.config, "config", "", "pass config, YAML or JSON (required)")
	fs.StringVar(&a.id, "id", "", "schedule ID (required); its passes get workflow IDs <SCHED>-pass-<time>")
	fs.StringVar(&a.cron, "cron", "", `cron expression, in UTC unless it begins CRON_TZ=<zone>, e.g. "0 2 * * *" or "CRON_TZ=Europe/Paris 0 2 * * *"`)
	fs.DurationVar(&a.every, "every", 0, "interval, e.g. 24h")
	fs.BoolVar(&a.paused, "paused", false, "create the schedule paused")
	pos, err := parse(fs, createSynopsis, args)
	if err != nil {
		return a, err
	}
	switch {
	case len(pos) > 0:
		return a, usageErrorf("schedule create: unexpected argument %q (usage: starter schedule create %s)", pos[0], createSynopsis)
	case a.config == "":
		return a, usageErrorf("schedule create: -config FILE is required (usage: starter schedule create %s)", createSynopsis)
	case a.id == "":
		return a, usageErrorf("schedule create: -id SCHED is required (usage: starter schedule create %s)", createSynopsis)
	}
	if err := checkID("-id", a.id); err != nil {
		return a, err
	}
	if err := everyGiven(fs, a.every); err != nil {
		return a, err
	}
	if _, err := scheduleSpec(a.cron, a.every); err != nil {
		return a, &exitError{code: 2, err: err}
	}
	return a, nil
}

// everyGiven refuses an -every given as 0 (0s, 0h): read as no -every, it
// would be answered "give -cron EXPR or -every DURATION" though one was.
func everyGiven(fs *flag.FlagSet, every time.Duration) error {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "every" })
	if given && every == 0 {
		return &exitError{code: 2, err: fmt.Errorf("%s: -every %s: must be positive, e.g. 24h", fs.Name(), every)}
	}
	return nil
}

// scheduleSpec is when a schedule fires: exactly one of a cron expression
// and an interval.
func scheduleSpec(cron string, every time.Duration) (client.ScheduleSpec, error) {
	cron = strings.TrimSpace(cron)
	switch {
	case cron != "" && every != 0:
		return client.ScheduleSpec{}, errors.New("schedule: give -cron or -every, not both")
	case cron != "":
		// A comment (# to the end) is no field, as the server reads it.
		expr, _, _ := strings.Cut(cron, "#")
		fields := strings.Fields(expr)
		if len(fields) == 0 {
			return client.ScheduleSpec{}, fmt.Errorf("schedule: -cron %q: no fields before the comment", cron)
		}
		// A leading CRON_TZ=<zone> (or TZ=) sets the zone the fields are
		// read in, as Temporal reads it.
		if k, zone, ok := strings.Cut(fields[0], "="); ok && (k == "CRON_TZ" || k == "TZ") {
			if _, err := time.LoadLocation(zone); err != nil || zone == "" {
				return client.ScheduleSpec{}, fmt.Errorf("schedule: -cron %q: %q is not a time zone (want an IANA name, e.g. Europe/Paris)", cron, zone)
			}
			fields = fields[1:]
		}
		if n := len(fields); !(n > 0 && strings.HasPrefix(fields[0], "@")) && n != 5 && n != 7 { // @daily, @every 12h: the server reads them
			// Six fields are read by Temporal as minute to year, by
			// Quartz and robfig/cron as second to weekday: refused.
			return client.ScheduleSpec{}, fmt.Errorf("schedule: -cron %q: want 5 fields (minute hour day-of-month month day-of-week), 7 (second first, year last) or @daily and the like, got %d", cron, n)
		}
		return client.ScheduleSpec{CronExpressions: []string{cron}}, nil
	case every < 0:
		return client.ScheduleSpec{}, fmt.Errorf("schedule: -every %s: must be positive, e.g. 24h", every)
	case every > 0:
		if every < time.Second {
			return client.ScheduleSpec{}, fmt.Errorf("schedule: -every %s: must be at least 1s", every)
		}
		return client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: every}}}, nil
	}
	return client.ScheduleSpec{}, errors.New("schedule: give -cron EXPR or -every DURATION")
}

func scheduleOptions(a createArgs, cfg schemas.Config) (client.ScheduleOptions, error) {
	spec, err := scheduleSpec(a.cron, a.every)
	if err != nil {
		return client.ScheduleOptions{}, err
	}
	return workflows.PassSchedule(a.id, spec, cfg, a.paused), nil
}

func scheduleCreate(ctx context.Context, e *cli, args []string) error {
	a, err := parseCreate(e, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(a.config)
	if err != nil {
		return err
	}
	opts, err := scheduleOptions(a, cfg)
	if err != nil {
		return err
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	h, err := c.ScheduleClient().Create(ctx, opts)
	if err != nil {
		if errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
			return fmt.Errorf("schedule %q exists already: change it in place, keeping its counts and recent passes, with `starter schedule update -config FILE [-cron EXPR | -every DURATION] %s`, or delete it first (`starter schedule delete %s`)", a.id, a.id, a.id)
		}
		return scheduleErr(e, a.id, "create", err)
	}
	fmt.Fprintf(e.stdout, "created schedule %s\n", a.id)
	e.warnNoWorkflowWorker(ctx, c, "pass")
	return scheduleDescribe(ctx, e, c, h)
}

const updateSynopsis = "[-config FILE] [-cron EXPR | -every DURATION] SCHED"

// scheduleUpdate changes a schedule's config or its timing in place,
// keeping its counts and recent passes. A schedule holds the config it was
// given, not the file's name: a file edited after `schedule create` changes
// nothing until it is given here.
func scheduleUpdate(ctx context.Context, e *cli, args []string) error {
	fs := e.flags("schedule update")
	var configFile, cron string
	var every time.Duration
	fs.StringVar(&configFile, "config", "", "pass config, YAML or JSON, for the schedule's next passes")
	fs.StringVar(&cron, "cron", "", `new cron expression, as for create`)
	fs.DurationVar(&every, "every", 0, "new interval, e.g. 24h")
	id, err := oneArg(fs, updateSynopsis, "schedule id", args)
	if err != nil {
		return err
	}
	if err := everyGiven(fs, every); err != nil {
		return err
	}
	if configFile == "" && cron == "" && every == 0 {
		return usageErrorf("schedule update: give -config FILE, -cron EXPR or -every DURATION (usage: starter schedule update %s)", updateSynopsis)
	}
	var spec *client.ScheduleSpec
	if cron != "" || every != 0 {
		s, err := scheduleSpec(cron, every)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		spec = &s
	}
	var cfg *schemas.Config
	if configFile != "" {
		c, err := loadConfig(configFile)
		if err != nil {
			return err
		}
		cfg = &c
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	h := c.ScheduleClient().GetHandle(ctx, id)
	err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		s := in.Description.Schedule
		if spec != nil {
			s.Spec = spec
		}
		if cfg != nil {
			// A namespace's other schedules are not ours to give a
			// pass's config: their workflows would fail on it nightly.
			act, ok := s.Action.(*client.ScheduleWorkflowAction)
			if ok {
				name, _ := act.Workflow.(string)
				ok = name == "DebugPass" && act.TaskQueue == workflows.CPUQueue
			}
			if !ok {
				return nil, fmt.Errorf("schedule %s does not start DCD passes (DebugPass on %s); its arguments are left as they are", id, workflows.CPUQueue)
			}
			act.Args = []any{workflows.PassInput{Config: *cfg}}
		}
		return &client.ScheduleUpdate{Schedule: &s}, nil
	}})
	if err != nil {
		return scheduleErr(e, id, "update", err)
	}
	fmt.Fprintf(e.stdout, "updated schedule %s\n", id)
	return scheduleDescribe(ctx, e, c, h)
}

func scheduleList(ctx context.Context, e *cli, args []string) error {
	fs := e.flags("schedule list")
	pos, err := parse(fs, "", args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf("schedule list: unexpected argument %q", pos[0])
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	it, err := c.ScheduleClient().List(ctx, client.ScheduleListOptions{})
	if err != nil {
		return fmt.Errorf("schedule list: %w", err)
	}
	rows := [][]string{{"SCHEDULE", "STATE", "SPEC", "NEXT RUN", "LAST PASS"}}
	for it.HasNext() {
		s, err := it.Next()
		if err != nil {
			return fmt.Errorf("schedule list: %w", err)
		}
		state := "active"
		if s.Paused {
			state = "paused"
		}
		next, last := "-", "-"
		if times := nextTimes(s.NextActionTimes, s.Paused, time.Now()); len(times) > 0 {
			next = times[0]
		}
		if n := len(s.RecentActions); n > 0 && s.RecentActions[n-1].StartWorkflowResult != nil {
			last = s.RecentActions[n-1].StartWorkflowResult.WorkflowID
		}
		when := specString(s.Spec)
		if s.Spec != nil && s.Spec.TimeZoneName != "" && len(s.Spec.Calendars) > 0 {
			when += " (" + s.Spec.TimeZoneName + ")" // else read as UTC
		}
		rows = append(rows, []string{s.ID, state, when, next, last})
	}
	if len(rows) == 1 {
		fmt.Fprintln(e.stdout, "no schedules")
		return nil
	}
	writeColumns(e.stdout, rows)
	return nil
}

func scheduleDescribe(ctx context.Context, e *cli, c client.Client, h client.ScheduleHandle) error {
	d, err := h.Describe(ctx)
	if err != nil {
		return scheduleErr(e, h.GetID(), "describe", err)
	}
	var rows [][]string
	add := func(k, v string) { rows = append(rows, []string{k, v}) }
	add("schedule", h.GetID())
	zone := "UTC"
	if d.Schedule.Spec != nil && d.Schedule.Spec.TimeZoneName != "" {
		zone = d.Schedule.Spec.TimeZoneName
	}
	add("spec", specString(d.Schedule.Spec)+" ("+zone+")")
	state := "active"
	if st := d.Schedule.State; st != nil {
		if st.Paused {
			state = "paused"
		}
		if st.Note != "" { // pause's, or unpause's
			state += ": " + st.Note
		}
	}
	add("state", state)
	if act, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction); ok {
		add("action", fmt.Sprintf("%v on %s, workflow IDs %s-<time>%s", act.Workflow, act.TaskQueue, act.ID, configName(act.Args)))
	}
	add("actions", fmt.Sprintf("%d taken, %d skipped (a pass was running), %d missed", d.Info.NumActions, d.Info.NumActionsSkippedOverlap, d.Info.NumActionsMissedCatchupWindow))
	for _, r := range d.Info.RunningWorkflows {
		add("running", r.WorkflowID)
	}
	if d.Info.LastUpdateAt.Unix() > 0 { // the server sends the epoch for none
		// Whether an update (a new config, a timing) took.
		add("updated", d.Info.LastUpdateAt.UTC().Format(time.RFC3339))
	}
	paused := d.Schedule.State != nil && d.Schedule.State.Paused
	times := nextTimes(d.Info.NextActionTimes, paused, time.Now())
	for _, t := range times[:min(len(times), 5)] {
		add("next", t)
	}
	if paused {
		add("next", "none while paused")
	}
	for _, a := range d.Info.RecentActions {
		if a.StartWorkflowResult == nil {
			continue
		}
		id := a.StartWorkflowResult.WorkflowID
		status := ""
		if st, err := describe(ctx, c, e.g, id); err == nil {
			status = " " + st.status.String()
		}
		add("recent", fmt.Sprintf("%s %s%s", a.ActualTime.UTC().Format(time.RFC3339), id, status))
	}
	if len(d.Info.RecentActions) == 0 {
		add("recent", "none yet")
	}
	writeColumns(e.stdout, rows)
	return nil
}

// nextTimes are a schedule's next firings as shown: none while it is
// paused, and none past, which the server goes on listing for a schedule
// paused since (they never fire).
func nextTimes(times []time.Time, paused bool, now time.Time) []string {
	var shown []string
	for _, t := range times {
		if !paused && !t.Before(now) {
			shown = append(shown, t.UTC().Format(time.RFC3339))
		}
	}
	return shown
}

// configName decodes the schedule's PassInput to name its config.
func configName(args []any) string {
	if len(args) != 1 {
		return ""
	}
	var in workflows.PassInput
	switch a := args[0].(type) {
	case *commonpb.Payload:
		if err := converter.GetDefaultDataConverter().FromPayload(a, &in); err != nil {
			return ""
		}
	case workflows.PassInput:
		in = a
	default:
		return ""
	}
	return fmt.Sprintf(", config %q", in.Config.Name)
}

// specString writes a schedule spec the way a user would have given it.
func specString(s *client.ScheduleSpec) string {
	if s == nil {
		return "-"
	}
	var parts []string
	parts = append(parts, s.CronExpressions...)
	for _, c := range s.Calendars {
		parts = append(parts, calendarString(c))
	}
	for _, iv := range s.Intervals {
		p := "every " + durationString(iv.Every)
		if iv.Offset != 0 {
			p += " offset " + durationString(iv.Offset)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}

// calendarString writes a calendar spec as a cron expression: five fields,
// or seven, with seconds first and the year last, when either is set.
func calendarString(c client.ScheduleCalendarSpec) string {
	f := []string{
		rangesString(c.Minute, 0, 59, "0"),
		rangesString(c.Hour, 0, 23, "0"),
		rangesString(c.DayOfMonth, 1, 31, "*"),
		rangesString(c.Month, 1, 12, "*"),
		rangesString(c.DayOfWeek, 0, 6, "*"),
	}
	// Seconds are written only with a year, as seven fields: six read
	// as minute to year, so a cron pasted back fires when it says.
	sec := rangesString(c.Second, 0, 59, "0")
	if sec != "0" || len(c.Year) > 0 {
		f = append([]string{sec}, append(f, rangesString(c.Year, 0, 0, "*"))...)
	}
	return strings.Join(f, " ")
}

// rangesString writes ranges in cron syntax; a range covering lo-hi is *.
func rangesString(rs []client.ScheduleRange, lo, hi int, empty string) string {
	if len(rs) == 0 {
		return empty
	}
	var out []string
	for _, r := range rs {
		end := max(r.End, r.Start)
		step := max(r.Step, 1)
		var s string
		switch {
		case r.Start == lo && end == hi && lo != hi:
			s = "*"
		case end == r.Start:
			s = fmt.Sprint(r.Start)
		default:
			s = fmt.Sprintf("%d-%d", r.Start, end)
		}
		if step > 1 {
			s += fmt.Sprintf("/%d", step)
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

// durationString drops a Duration's zero tails: 24h, not 24h0m0s.
func durationString(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
