/*
 * potbank_sim: runs the compiled potentiometer-controller firmware (potbank.elf) under
 * simavr, with UART0 on a pseudo-terminal and one MCP4131 model on each chip-select pin.
 *
 *   potbank_sim FIRMWARE.elf [-m MCU] [-f HZ] [-b] [-a PIN] CS...
 *                              CS, PIN = port letter and bit, e.g. A0 C7
 *
 * -b: as behind a stock Arduino bootloader, which reads and clears MCUSR before the
 * sketch starts: the firmware sees MCUSR = 0 after every reset.
 * -a PIN: the in-situ controller's analog front end (PROTOCOL.md §12.6): UART1 on a second
 * pseudo-terminal, served by the physics model of the host side, and PIN its LEARN enable
 * line, whose every high time is reported in simulated CPU cycles.
 *
 * stdout, one line each, flushed:
 *   PTY <path>                 the tty the host opens (UART0 at the firmware's baud rate)
 *   W <pot> <value> <ms>       pot's volatile wiper 0 changed (9-bit register value), at
 *                              simulated time ms since the last reset
 *   S <token>                  answer to "sync <token>": every earlier W line is out
 *   RESET <cause>              the MCU was reset (MCUSR bits)
 *   SLOW <pot> <sck>           a read over the shared SDI/SDO pin clocked faster than the
 *                              part allows (its data came back one bit late)
 *   PTY1 <path>                with -a: the tty of UART1 (the analog front end's link)
 *   L <cycles>                 with -a: LEARN was high for that many CPU cycles
 *   STACK <address>            answer to "stack": the lowest stack pointer since the reset
 * stdin commands:
 *   reset external|watchdog|brownout|power   reset the MCU with that MCUSR cause; "power"
 *                              (a power cycle) also puts every pot back to its power-on value
 *                              and leaves the SRAM with arbitrary contents
 *   sync <token>
 *   stack
 *   quit
 *
 * Each UART is bridged to its pseudo-terminal by the simulation thread itself (not by
 * simavr's uart_pty, whose own thread feeds the simulated UART concurrently with the
 * simulation and loses or garbles bytes under load): bytes the firmware sends go to the
 * pty as they leave the UART, bytes from the pty enter the UART's receive FIFO while it
 * signals room (XON).
 *
 * Simulated time is paced to wall-clock time, so the firmware's millis() counts real
 * milliseconds (a simulation slower than real time runs as fast as it can and says so
 * on stderr when it ends).
 *
 * The MCP4131 model follows the datasheet (Microchip DS22060): 16-bit commands
 * AD3:AD0 C1:C0 D9:D0 (write data, read data) and 8-bit commands (increment, decrement);
 * valid combinations: volatile wiper 0 (address 0) with all four commands, TCON
 * (address 4) read and write, STATUS (address 5) read. The SDI/SDO pin is shared: the
 * part drives it only for the CMDERR bit (7th clock, 1 = valid) and, for a read, the nine
 * data bits D8:D0 that follow; at other clocks MISO reads the master's own MOSI bit
 * through the bus resistor. After an invalid combination the part ignores the bus and
 * drives 0 until chip select goes high. Commands execute on their last clock; raising
 * chip select aborts a partial command. The wiper register holds 9 bits (0x000-0x1FF);
 * 0x080 is full scale (W = A) and 0x081-0x1FF act as full scale; increment stops at
 * 0x080, decrement at 0x000, and both are ignored above 0x080. Power-on value 0x040.
 * The SPI must be in mode 0,0 or 1,1, MSB first. A read over the shared pin is
 * specified up to 250 kHz SCK (DS22060 Table 1-3: the part's output is valid only 1.6 us
 * after the falling edge): at a faster clock the model's data bits arrive one clock late,
 * as the master would sample them, and a line "SLOW <pot> <sck Hz>" goes to stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_io.h"
#include "sim_irq.h"
#include "sim_regbit.h"
#include "avr_ioport.h"
#include "avr_spi.h"
#include "avr_uart.h"
#include <pty.h>
#include <termios.h>

#define MAX_POTS 64
#define POR_WIPER 0x040
#define FULL_SCALE 0x080

typedef struct {
  int index;
  char port;
  int bit;
  int selected;       /* chip select low (pin driven low as an output) */
  int pos;            /* clocks into the current command */
  uint16_t shift;     /* bits received in the current command */
  uint16_t data;      /* data bits of a write command received so far */
  int error;          /* CMDERR latched until chip select goes high */
  uint16_t wiper;     /* volatile wiper 0, 9 bits */
  uint16_t tcon;
} mcp4131_t;

static avr_t* avr;
static mcp4131_t pots[MAX_POTS];
static int n_pots;
static avr_irq_t* spi_in;
static avr_cycle_count_t reset_cycle;
static int bootloader;  /* -b: MCUSR reads 0 in the sketch */
static uint64_t reset_wall_ns;
static char learn_port;  /* -a: the LEARN line, 0 without a front end */
static int learn_bit;
static avr_cycle_count_t learn_rise;
static unsigned min_sp;

static uint64_t wall_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static double sim_ms(void) {
  return (double)(avr->cycle - reset_cycle) * 1000.0 / (double)avr->frequency;
}

static void wiper_changed(mcp4131_t* p, uint16_t value) {
  if (value == p->wiper) return;
  p->wiper = value;
  printf("W %d %u %.3f\n", p->index, (unsigned)value, sim_ms());
  fflush(stdout);
}

static int pin_selected(mcp4131_t* p) {
  avr_ioport_state_t st;
  if (avr_ioctl(avr, AVR_IOCTL_IOPORT_GETSTATE(p->port), &st) != 0) return 0;
  /* an input pin floats high through the board's pull-up: not selected */
  return ((st.ddr >> p->bit) & 1) && !((st.port >> p->bit) & 1);
}

static void update_select(mcp4131_t* p) {
  int sel = pin_selected(p);
  if (sel != p->selected) {  /* either edge resets the serial interface */
    p->selected = sel;
    p->pos = 0;
    p->shift = 0;
    p->error = 0;
  }
}

static void cs_changed(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq; (void)value;
  update_select((mcp4131_t*)param);
}

/* The LEARN line: its high time in CPU cycles, reported at the falling edge. */
static void learn_changed(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq; (void)param;
  if (value) {
    learn_rise = avr->cycle;
  } else if (learn_rise) {
    printf("L %llu\n", (unsigned long long)(avr->cycle - learn_rise));
    fflush(stdout);
    learn_rise = 0;
  }
}

/* A UART bridged to a pty, pumped from the simulation thread. */
typedef struct {
  char uart;
  int master;
  char slave[64];
  int xon;
  uint8_t pending[4096];
  size_t len, done;
  unsigned long dropped;  /* bytes for the host lost because nobody read the pty */
} bridge_t;

static bridge_t bridges[2];
static int n_bridges;

static void bridge_from_avr(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq;
  bridge_t* b = (bridge_t*)param;
  uint8_t c = (uint8_t)value;
  if (write(b->master, &c, 1) != 1) b->dropped++;
}

static void bridge_xon(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq; (void)value;
  ((bridge_t*)param)->xon = 1;
}

static void bridge_xoff(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq; (void)value;
  ((bridge_t*)param)->xon = 0;
}

static int bridge_open(bridge_t* b, char uart) {
  int slave;
  b->uart = uart;
  b->xon = 1;
  if (openpty(&b->master, &slave, b->slave, NULL, NULL) < 0) return -1;
  struct termios tio;
  tcgetattr(b->master, &tio);
  cfmakeraw(&tio);
  tcsetattr(b->master, TCSANOW, &tio);
  (void)slave;  /* kept open, as a terminal whose other end is always there */
  fcntl(b->master, F_SETFL, fcntl(b->master, F_GETFL) | O_NONBLOCK);
  uint32_t flags = 0;  /* no stdio echo of the UART */
  avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS(uart), &flags);
  flags &= ~AVR_UART_FLAG_STDIO;
  avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS(uart), &flags);
  return 0;
}

static void bridge_attach(bridge_t* b) {
  avr_irq_t* out = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(b->uart), UART_IRQ_OUTPUT);
  avr_irq_t* xon = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(b->uart), UART_IRQ_OUT_XON);
  avr_irq_t* xoff = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(b->uart), UART_IRQ_OUT_XOFF);
  avr_irq_unregister_notify(out, bridge_from_avr, b);
  avr_irq_register_notify(out, bridge_from_avr, b);
  avr_irq_unregister_notify(xon, bridge_xon, b);
  avr_irq_register_notify(xon, bridge_xon, b);
  avr_irq_unregister_notify(xoff, bridge_xoff, b);
  avr_irq_register_notify(xoff, bridge_xoff, b);
}

/* Bytes from the host into the UART's receive FIFO, while it has room. */
static void bridge_pump(bridge_t* b) {
  if (b->done == b->len) {
    ssize_t n = read(b->master, b->pending, sizeof b->pending);
    if (n <= 0) return;
    b->len = (size_t)n;
    b->done = 0;
  }
  avr_irq_t* in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(b->uart), UART_IRQ_INPUT);
  while (b->xon && b->done < b->len) avr_raise_irq(in, b->pending[b->done++]);
}

static int valid_combination(unsigned addr, unsigned cmd) {
  if (addr == 0x0) return 1;                 /* volatile wiper 0: write, incr, decr, read */
  if (addr == 0x4) return cmd == 0 || cmd == 3;  /* TCON: write, read */
  if (addr == 0x5) return cmd == 3;          /* STATUS: read only */
  return 0;                                  /* wiper 1 and up: not on a single-pot part */
}

static uint16_t read_register(mcp4131_t* p, unsigned addr) {
  if (addr == 0x0) return p->wiper;
  if (addr == 0x4) return p->tcon;
  return 0x1F0;  /* STATUS: reserved bits read 1, no EEPROM write, not shut down */
}

#define MAX_READ_SCK 250000ul

/* SCK of the master: F_CPU / 4, 16, 64, 128 by SPR1:0, doubled by SPI2X. */
static unsigned long sck_hz(void) {
  static const unsigned div[4] = {4, 16, 64, 128};
  uint8_t spcr = avr->data[0x4C], spsr = avr->data[0x4D];
  unsigned long f = avr->frequency / div[spcr & 3];
  return (spsr & 1) ? 2 * f : f;
}

/* One clock: the master's MOSI bit in, the MISO bit it samples out. */
static int clock_bit(mcp4131_t* p, int mosi) {
  if (p->error) return 0;
  int pos = p->pos++;
  if (pos < 6) {
    p->shift = (uint16_t)((p->shift << 1) | mosi);
    return mosi;
  }
  unsigned addr = (p->shift >> 2) & 0xF, cmd = p->shift & 0x3;
  if (pos == 6) {
    if (!valid_combination(addr, cmd)) { p->error = 1; return 0; }
    return 1;  /* CMDERR: valid */
  }
  if (cmd == 1 || cmd == 2) {  /* 8-bit increment / decrement: executes on clock 8 */
    p->pos = 0; p->shift = 0;
    if (cmd == 1 && p->wiper < FULL_SCALE) wiper_changed(p, p->wiper + 1);
    if (cmd == 2 && p->wiper > 0 && p->wiper <= FULL_SCALE) wiper_changed(p, p->wiper - 1);
    return mosi;
  }
  int data_bit = 15 - pos;  /* D8 at clock 8 ... D0 at clock 16 */
  if (cmd == 3) {
    uint16_t value = read_register(p, addr);
    int out = (value >> data_bit) & 1;
    if (sck_hz() > MAX_READ_SCK) {  /* sampled before the part's output settles: the previous bit */
      out = data_bit == 8 ? 1 : (value >> (data_bit + 1)) & 1;
      if (pos == 15) { printf("SLOW %d %lu\n", p->index, sck_hz()); fflush(stdout); }
    }
    if (pos == 15) { p->pos = 0; p->shift = 0; }
    return out;
  }
  /* write data: D8:D0 from MOSI (D9, at clock 7, is the CMDERR slot) */
  if (pos == 7) p->data = 0;
  p->data = (uint16_t)((p->data << 1) | mosi);
  if (pos == 15) {
    p->pos = 0; p->shift = 0;
    if (addr == 0x0) wiper_changed(p, p->data & 0x1FF);
    else p->tcon = p->data & 0x1FF;
  }
  return mosi;
}

static int spi_mode_ok(void) {
  /* SPCR: SPIE SPE DORD MSTR CPOL CPHA SPR1 SPR0; the MCP4131 takes modes 0,0 and 1,1, MSB first */
  uint8_t spcr = avr->data[0x4C];
  int dord = (spcr >> 5) & 1, cpol = (spcr >> 3) & 1, cpha = (spcr >> 2) & 1;
  return !dord && cpol == cpha;
}

static int debug;  /* POTBANK_SIM_DEBUG set: SPI bytes and a heartbeat on stderr */

static void spi_byte(struct avr_irq_t* irq, uint32_t value, void* param) {
  (void)irq; (void)param;
  if (debug) fprintf(stderr, "spi %02x at %.3f ms\n", (unsigned)value, sim_ms());
  mcp4131_t* sel = NULL;
  for (int i = 0; i < n_pots; i++) {
    update_select(&pots[i]);
    if (pots[i].selected) {
      if (sel) fprintf(stderr, "potbank_sim: pots %d and %d selected together\n", sel->index, i);
      sel = &pots[i];
    }
  }
  uint8_t miso = (uint8_t)value;  /* nobody drives the pin: MISO reads MOSI via the resistor */
  if (sel) {
    if (!spi_mode_ok()) {
      fprintf(stderr, "potbank_sim: SPI not in mode 0,0 / 1,1 MSB first (SPCR %02x)\n", avr->data[0x4C]);
      sel->error = 1;
    }
    miso = 0;
    for (int b = 7; b >= 0; b--) miso |= (uint8_t)(clock_bit(sel, (value >> b) & 1) << b);
  }
  avr_raise_irq(spi_in, miso);
}

/* The SPI output and the chip-select pins, watched; again after every reset, which
   clears the IRQ hooks in this simavr. */
static void attach(void) {
  avr_irq_t* spi_out = avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_OUTPUT);
  spi_in = avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_INPUT);
  avr_irq_unregister_notify(spi_out, spi_byte, NULL);
  avr_irq_register_notify(spi_out, spi_byte, NULL);
  for (int i = 0; i < n_pots; i++) {
    avr_irq_t* cs = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(pots[i].port), pots[i].bit);
    avr_irq_unregister_notify(cs, cs_changed, &pots[i]);
    avr_irq_register_notify(cs, cs_changed, &pots[i]);
  }
  for (int i = 0; i < n_bridges; i++) bridge_attach(&bridges[i]);
  if (learn_port) {
    avr_irq_t* learn = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(learn_port), learn_bit);
    avr_irq_unregister_notify(learn, learn_changed, NULL);
    avr_irq_register_notify(learn, learn_changed, NULL);
  }
}

static void do_reset(uint8_t cause, int power) {
  if (power)
    for (int i = 0; i < n_pots; i++) { wiper_changed(&pots[i], POR_WIPER); pots[i].tcon = 0x1FF; }
  avr_reset(avr);
  attach();
  if (power) {  /* SRAM comes up with arbitrary contents after a power cycle */
    static uint32_t noise = 0x2545F491u;
    for (unsigned a = avr->ioend + 1u; a <= avr->ramend; a++) {
      noise ^= noise << 13; noise ^= noise >> 17; noise ^= noise << 5;
      avr->data[a] = (uint8_t)noise;
    }
  }
  if (avr->reset_flags.porf.reg) avr->data[avr->reset_flags.porf.reg] = bootloader ? 0 : cause;
  reset_cycle = avr->cycle;
  reset_wall_ns = wall_ns();
  learn_rise = 0;
  min_sp = avr->ramend;
  for (int i = 0; i < n_pots; i++) update_select(&pots[i]);
  printf("RESET %u\n", (unsigned)cause);
  fflush(stdout);
}

static int command(char* line) {
  char arg[64] = "";
  if (!strncmp(line, "quit", 4)) return 1;
  if (sscanf(line, "sync %63s", arg) == 1) { printf("S %s\n", arg); fflush(stdout); return 0; }
  if (!strncmp(line, "stack", 5)) { printf("STACK %u\n", min_sp); fflush(stdout); return 0; }
  if (sscanf(line, "reset %63s", arg) == 1) {
    if (!strcmp(arg, "power")) do_reset(0x01, 1);
    else if (!strcmp(arg, "external")) do_reset(0x02, 0);
    else if (!strcmp(arg, "brownout")) do_reset(0x04, 0);
    else if (!strcmp(arg, "watchdog")) do_reset(0x08, 0);
    else fprintf(stderr, "potbank_sim: unknown reset %s (power, external, brownout, watchdog)\n", arg);
    return 0;
  }
  fprintf(stderr, "potbank_sim: unknown command: %s", line);
  return 0;
}

/* stdin, non-blocking: complete lines are executed; returns 1 on quit or end of input */
static int poll_stdin(void) {
  static char buf[256];
  static size_t len;
  ssize_t n = read(0, buf + len, sizeof buf - 1 - len);
  if (n == 0) return 1;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
  len += (size_t)n;
  buf[len] = 0;
  char* nl;
  while ((nl = strchr(buf, '\n'))) {
    char line[256];
    size_t k = (size_t)(nl - buf) + 1;
    memcpy(line, buf, k);
    line[k] = 0;
    memmove(buf, buf + k, len - k + 1);
    len -= k;
    if (command(line)) return 1;
  }
  if (len >= sizeof buf - 1) len = 0;
  return 0;
}

int main(int argc, char** argv) {
  const char* mcu = "atmega2560";
  uint32_t freq = 16000000;
  const char* elf = NULL;
  debug = getenv("POTBANK_SIM_DEBUG") != NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-m") && i + 1 < argc) mcu = argv[++i];
    else if (!strcmp(argv[i], "-f") && i + 1 < argc) freq = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "-b")) bootloader = 1;
    else if (!strcmp(argv[i], "-a") && i + 1 < argc && strlen(argv[i + 1]) == 2 &&
             argv[i + 1][0] >= 'A' && argv[i + 1][0] <= 'L' && argv[i + 1][1] >= '0' && argv[i + 1][1] <= '7') {
      learn_port = argv[++i][0];
      learn_bit = argv[i][1] - '0';
    }
    else if (!elf) elf = argv[i];
    else if (n_pots < MAX_POTS && strlen(argv[i]) == 2 && argv[i][0] >= 'A' && argv[i][0] <= 'L' &&
             argv[i][1] >= '0' && argv[i][1] <= '7') {
      mcp4131_t* p = &pots[n_pots];
      p->index = n_pots++;
      p->port = argv[i][0];
      p->bit = argv[i][1] - '0';
      p->wiper = POR_WIPER;
      p->tcon = 0x1FF;
    } else {
      fprintf(stderr, "potbank_sim: bad argument %s (chip selects are a port letter A-L and a bit 0-7, "
                      "at most %d)\n", argv[i], MAX_POTS);
      return 2;
    }
  }
  if (!elf) {
    fprintf(stderr, "usage: potbank_sim FIRMWARE.elf [-m MCU] [-f HZ] [-b] [-a PIN] CS...\n");
    return 2;
  }
  elf_firmware_t fw;
  memset(&fw, 0, sizeof fw);
  if (elf_read_firmware(elf, &fw) != 0) {
    fprintf(stderr, "potbank_sim: cannot read %s\n", elf);
    return 2;
  }
  avr = avr_make_mcu_by_name(mcu);
  if (!avr) return 2;
  avr_init(avr);
  avr->frequency = freq;
  avr->log = 0;
  avr_load_firmware(avr, &fw);
  avr->frequency = freq;

  if (bridge_open(&bridges[n_bridges++], '0') < 0 || (learn_port && bridge_open(&bridges[n_bridges++], '1') < 0)) {
    fprintf(stderr, "potbank_sim: cannot open a pty: %s\n", strerror(errno));
    return 2;
  }

  spi_in = avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_INPUT);
  avr_irq_t* spi_out = avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_OUTPUT);
  if (!spi_in || !spi_out) { fprintf(stderr, "potbank_sim: %s has no SPI\n", mcu); return 2; }
  for (int i = 0; i < n_pots; i++)
    if (!avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(pots[i].port), pots[i].bit)) {
      fprintf(stderr, "potbank_sim: %s has no port %c\n", mcu, pots[i].port);
      return 2;
    }
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);

  printf("PTY %s\n", bridges[0].slave);
  if (learn_port) printf("PTY1 %s\n", bridges[1].slave);
  for (int i = 0; i < n_pots; i++) printf("W %d %u 0.000\n", i, (unsigned)pots[i].wiper);
  fflush(stdout);
  do_reset(0x01, 1);  /* power-on */

  double behind_ms = 0;
  for (;;) {
    for (int k = 0; k < 2000; k++) {
      int state = avr_run(avr);
      unsigned sp = (unsigned)avr->data[R_SPL] | (unsigned)avr->data[R_SPH] << 8;
      if (sp < min_sp) min_sp = sp;
      if (state == cpu_Done || state == cpu_Crashed) {
        fprintf(stderr, "potbank_sim: the MCU stopped (state %d)\n", state);
        return 1;
      }
    }
    for (int i = 0; i < n_bridges; i++) bridge_pump(&bridges[i]);
    double lead_ms = sim_ms() - (double)(wall_ns() - reset_wall_ns) / 1e6;
    if (lead_ms > 1.0) usleep((useconds_t)(lead_ms * 1000.0));
    else if (-lead_ms > behind_ms) behind_ms = -lead_ms;
    if (debug && (avr->cycle / 16000) % 500 == 0)
      fprintf(stderr, "pc %05x at %.3f ms, state %d, SPCR %02x SPSR %02x\n", avr->pc, sim_ms(), avr->state, avr->data[0x4C], avr->data[0x4D]);
    if (poll_stdin()) break;
  }
  if (behind_ms > 5.0) fprintf(stderr, "potbank_sim: simulation fell up to %.1f ms behind real time\n", behind_ms);
  for (int i = 0; i < n_bridges; i++)
    if (bridges[i].dropped) fprintf(stderr, "potbank_sim: UART%c: %lu bytes nobody read\n", bridges[i].uart, bridges[i].dropped);
  return 0;
}
