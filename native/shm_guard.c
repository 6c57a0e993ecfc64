/* Survive a client that shrinks a registered shared-memory object.
 *
 * The server maps each system shared-memory region once (server/shm.py). If the object's owner
 * truncates it afterwards, any access to the lost pages raises SIGBUS, which kills the process
 * whatever thread touched them (numpy, onnxruntime, a backend). This module installs a SIGBUS
 * handler that, for an address inside a watched mapping, maps a private zero page over the
 * faulting page and lets the access go on, counting the fault. The server then fails the
 * requests that used shared memory meanwhile and refuses the broken region
 * (server/shm_guard.py). A SIGBUS anywhere else goes to the handler that was there before (or
 * the default action, which ends the process as before).
 *
 * The handler only reads lock-free atomics and calls mmap (a plain system call on Linux).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 1024 /* >= the server's MAX_REGIONS, with room for unregistered ones still mapped */

static _Atomic uintptr_t starts[SLOTS];
static _Atomic uintptr_t ends[SLOTS];
static _Atomic unsigned long faults[SLOTS];
static _Atomic unsigned long total_faults;
static struct sigaction previous;
static size_t page_size;
static uintptr_t page_mask;
static int installed;

static void pass_on(int sig, siginfo_t *info, void *context) {
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction != NULL) {
            previous.sa_sigaction(sig, info, context);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* The default action: restore it; returning re-runs the access, which faults again. */
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGBUS, &fallback, NULL);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t start = atomic_load_explicit(&starts[i], memory_order_acquire);
        if (start == 0 || address < start || address >= atomic_load_explicit(&ends[i], memory_order_relaxed)) {
            continue;
        }
        void *page = (void *)(address & page_mask);
        void *zero = mmap(page, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (zero == MAP_FAILED) {
            break;
        }
        atomic_fetch_add(&faults[i], 1);
        atomic_fetch_add(&total_faults, 1);
        return;
    }
    pass_on(sig, info, context);
}

static int install(void) {
    if (installed) {
        return 0;
    }
    long page = sysconf(_SC_PAGESIZE);
    page_size = page > 0 ? (size_t)page : 4096;
    page_mask = ~((uintptr_t)page_size - 1);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    installed = 1;
    return 0;
}

/* watch(buffer) -> slot: guard the memory behind ``buffer`` (an mmap) until unwatch(slot). */
static PyObject *watch(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    uintptr_t start = (uintptr_t)view.buf, end = start + (uintptr_t)view.len;
    PyBuffer_Release(&view); /* the caller keeps the mapping alive; an export would block its close */
    if (view.len <= 0) {
        return PyLong_FromLong(-1);
    }
    if (install() != 0) {
        return NULL;
    }
    for (int i = 0; i < SLOTS; i++) { /* callers hold the GIL: no two watch at once */
        if (atomic_load(&starts[i]) == 0) {
            atomic_store(&faults[i], 0);
            atomic_store(&ends[i], end);
            atomic_store_explicit(&starts[i], start, memory_order_release);
            return PyLong_FromLong(i);
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "every shared-memory guard slot is in use");
    return NULL;
}

static int slot_of(PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (slot < 0 || slot >= SLOTS) {
        PyErr_SetString(PyExc_ValueError, "no such guard slot");
        return -1;
    }
    return (int)slot;
}

static PyObject *unwatch(PyObject *self, PyObject *arg) {
    int slot = slot_of(arg);
    if (slot < 0) {
        return NULL;
    }
    atomic_store(&starts[slot], 0);
    atomic_store(&ends[slot], 0);
    Py_RETURN_NONE;
}

static PyObject *slot_faults(PyObject *self, PyObject *arg) {
    int slot = slot_of(arg);
    if (slot < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(atomic_load(&faults[slot]));
}

static PyObject *epoch(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(atomic_load(&total_faults));
}

static PyMethodDef methods[] = {
    {"watch", watch, METH_O, "Guard an mmap's pages against SIGBUS; returns its slot."},
    {"unwatch", unwatch, METH_O, "Stop guarding a slot (before or when its mapping goes)."},
    {"faults", slot_faults, METH_O, "Faults taken in a slot's mapping since it was watched."},
    {"epoch", epoch, METH_NOARGS, "Faults taken in every watched mapping since the start."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_shm_guard", NULL, -1, methods};

PyMODINIT_FUNC PyInit__shm_guard(void) { return PyModule_Create(&module); }
