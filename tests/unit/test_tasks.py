"""The service's task list: a task per request, its progress as the core reports it, its end, the bound."""

from __future__ import annotations

from minivisor.errors import NotFoundError
from minivisor.service.routes import by_name
from minivisor.service.tasks import Tasks, is_task


def make() -> tuple[Tasks, list[dict]]:
    published: list[dict] = []
    return Tasks(published.append, keep=3), published


def test_changes_and_long_operations_are_tasks_reads_are_not():
    assert is_task(by_name("clone_vm")) and is_task(by_name("start_vm")) and is_task(by_name("datastore_delete"))
    assert is_task(by_name("copy_to_guest"))  # it does not change the VM, but it lasts and says how far it is
    assert not is_task(by_name("get_vm")) and not is_task(by_name("list_vms")) and not is_task(by_name("exec_in_vm"))


def test_a_clone_reports_its_progress_once_per_whole_percent_then_ends():
    tasks, published = make()
    task = tasks.begin(by_name("clone_vm"), {"source": "web", "target": "copy", "linked": False})
    report = tasks.reporter(task)
    for percent in (0.0, 0.2, 0.7, 1.0, 1.5, 42.0, 42.9, 100.0):
        report(percent)
    tasks.end(task, result=None)
    assert [(e["task"]["state"], e["task"]["progress"]) for e in published] == [
        ("running", 0.0), ("running", 1.0), ("running", 42.0), ("running", 100.0), ("done", 100.0)]
    assert all(e["type"] == "task" and e["vm"] == "web" for e in published)
    assert published[-1]["task"]["subject"] == "copy" and published[-1]["task"]["ended"] >= task.started


def test_an_import_reports_each_disk_by_name_and_a_failure_keeps_the_words():
    tasks, published = make()
    task = tasks.begin(by_name("import_vm"), {"folder": "/srv/in/web", "name": None})
    report = tasks.reporter(task)
    report("web.vmdk", 50.0)
    report("data.vmdk", 10.0)
    tasks.end(task, NotFoundError("the folder is gone", hint="give another"))
    assert [e["task"]["note"] for e in published] == [None, "web.vmdk", "data.vmdk", "data.vmdk"]
    ended = published[-1]["task"]
    assert (ended["state"], ended["error"]) == ("failed", "the folder is gone (give another)")
    assert "vm" not in published[0]  # no VM named yet: the event is for no VM


def test_a_task_without_a_progress_callback_has_no_percentage_until_it_ends():
    tasks, _ = make()
    task = tasks.begin(by_name("snapshot_take"), {"name": "web", "snapshot": "s1"})
    assert task.progress is None and task.as_dict()["state"] == "running"
    tasks.end(task, result=None)
    assert task.progress == 100.0


def test_the_list_keeps_those_running_and_the_last_that_ended_newest_first():
    tasks, _ = make()
    running = tasks.begin(by_name("start_vm"), {"name": "a"})
    for i in range(5):
        tasks.end(tasks.begin(by_name("stop_vm"), {"name": f"vm{i}"}), result=None)
    listed = tasks.list()
    assert [t["vm"] for t in listed] == ["vm4", "vm3", "vm2", "a"]
    assert listed[-1]["id"] == running.id and listed[-1]["state"] == "running"


def test_values_from_a_request_are_kept_only_as_short_strings():
    tasks, _ = make()
    task = tasks.begin(by_name("clone_vm"), {"source": ["not", "a", "name"], "target": "x" * 5000})
    assert task.vm is None and len(task.subject) < 300
    internal = tasks.begin(by_name("start_vm"), {"name": "a"})
    tasks.end(internal, RuntimeError("/secret/path in a traceback"))
    assert internal.error == "internal error (see the service's log)"
