// clln potentiometer controller — reference firmware (protocol: ../PROTOCOL.md, v1.1).
// Boards: Arduino Mega 2560 (reference), Arduino Uno (up to 15 pots); build with the
// Makefile beside this file. One chip-select line per pot.
// Built with POTBANK_INSITU (make INSITU=1, Mega 2560 only) it speaks v1.2: the in-situ
// mode of insitu.h, on an analog front end behind USART1 (PROTOCOL.md §12.7).
// Parts: MCP4131 (7-bit, 129 taps, SPI mode 0,0, SDI/SDO multiplexed on one pin: fit a
// resistor from MOSI to that pin and wire MISO straight to it for read-back) in
// rheostat mode between W and B, so tap 128 (W = A) is the highest resistance.
#include <SPI.h>
#include <avr/pgmspace.h>
#include <avr/wdt.h>
#include "potbank_protocol.h"

#ifndef POTBANK_N_POTS
#define POTBANK_N_POTS 16
#endif
const uint16_t N_POTS = POTBANK_N_POTS;
const uint16_t N_TAPS = 129;

// Chip-select pins in chain order (pot 0 first); the SPI pins and the UART are left out.
#if defined(__AVR_ATmega2560__) && defined(POTBANK_INSITU)
const char BOARD_NAME[] = "clln in-situ controller mega2560";
#elif defined(POTBANK_INSITU)
#error "the in-situ mode needs the Mega 2560's 8 KiB of SRAM and its USART1"
#elif defined(__AVR_ATmega2560__)
const char BOARD_NAME[] = "clln potbank MCP4131 mega2560";
#elif defined(__AVR_ATmega328P__)
const char BOARD_NAME[] = "clln potbank MCP4131 uno";
const uint8_t CS_TABLE[] PROGMEM = {2, 3, 4, 5, 6, 7, 8, 9, 10,  // D11-13: SPI
                                    14, 15, 16, 17, 18, 19};
#else
#error "potbank.ino supports the ATmega2560 (Mega 2560) and the ATmega328P (Uno)"
#endif
#if defined(__AVR_ATmega2560__)
const uint8_t CS_TABLE[] PROGMEM = {22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36,
                                    37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49,  // D50-53: SPI
                                    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69};
#endif
static_assert(N_POTS <= sizeof(CS_TABLE), "more pots than chip-select pins on this board");

// SPI mode 0,0. Writes at 1 MHz (the part takes 10 MHz); reads at 250 kHz, the datasheet's
// limit for a read over the shared SDI/SDO pin (DS22060 Table 1-3).
const SPISettings MCP4131_WRITE(1000000, MSBFIRST, SPI_MODE0);
#ifndef POTBANK_READ_HZ
#define POTBANK_READ_HZ 250000
#endif
const SPISettings MCP4131_READ(POTBANK_READ_HZ, MSBFIRST, SPI_MODE0);

// The reset cause: MCUSR saved (and cleared, with the watchdog stopped) before the C
// runtime starts. The stock bootloaders clear MCUSR themselves before the sketch runs;
// then the cause is inferred from a marker in RAM that survives a reset but not a
// power cycle (PROTOCOL.md §7.1).
uint8_t boot_mcusr __attribute__((section(".noinit")));
uint32_t warm_marker __attribute__((section(".noinit")));
const uint32_t WARM_MARK = 0xC11E5EEDUL;

void save_reset_cause() __attribute__((naked, used, section(".init3")));
void save_reset_cause() {
  boot_mcusr = MCUSR;
  MCUSR = 0;
  wdt_disable();
}

uint8_t reset_cause() {
  uint8_t cause = boot_mcusr & 0x0F;
  if (cause == 0) cause = warm_marker == WARM_MARK ? potbank::RESET_EXTERNAL : potbank::RESET_POWER_ON;
  warm_marker = WARM_MARK;
  return cause;
}

uint8_t cs_pin(uint16_t pot) { return pgm_read_byte(&CS_TABLE[pot]); }

// One 16-bit MCP4131 command (DS22060 §7): AD3..0 C1..0 D9..D0. Returns the 16 bits seen
// on MISO: the command's own bits until the part drives the shared pin.
uint16_t mcp4131(uint16_t pot, uint16_t command, const SPISettings& speed) {
  SPI.beginTransaction(speed);
  digitalWrite(cs_pin(pot), LOW);
  uint16_t r = SPI.transfer16(command);
  digitalWrite(cs_pin(pot), HIGH);
  SPI.endTransaction();
  return r;
}

// Write data (C = 00) to volatile wiper 0 (address 0).
void write_tap(uint16_t pot, uint16_t tap) {
  mcp4131(pot, (0x0 << 12) | (0b00 << 10) | (tap & 0x1FF), MCP4131_WRITE);
}

// Read data (C = 11) from volatile wiper 0; the data bits are sent as 1s so the part can
// pull the shared pin low. Bit 9 is CMDERR (1 = valid command): 0 means no part answered
// (no read-back resistor, no part) and gives 0xFFFF, which is never a tap.
int32_t read_tap(uint16_t pot) {
  uint16_t r = mcp4131(pot, (0x0 << 12) | (0b11 << 10) | 0x3FF, MCP4131_READ);
  return (r & 0x200) ? (int32_t)(r & 0x1FF) : 0xFFFF;
}

void send(const uint8_t* data, uint16_t n) { Serial.write(data, n); }
uint32_t now_ms() { return millis(); }

#ifdef POTBANK_INSITU
#include "frontend.h"
potbank::InSitu insitu(front_end(), send);
struct InSituExtension {  // the controller's hooks into the in-situ mode
  static uint8_t minor() { return insitu.minor(); }
  static bool stream(uint8_t cmd, const uint8_t* p, uint16_t n) { return insitu.stream(cmd, p, n); }
  static bool reply(uint8_t seq, uint8_t cmd, const uint8_t* p, uint16_t n, bool handshake, uint8_t* scratch,
                    uint16_t room) {
    return insitu.reply(seq, cmd, p, n, handshake, scratch, room);
  }
  static int32_t execute(uint8_t cmd, const uint8_t* p, uint16_t n, uint8_t* r, bool handshake) {
    return insitu.execute(cmd, p, n, r, handshake);
  }
  static void park() { insitu.park(); }
  static bool active() { return insitu.running(); }
};
potbank::Controller<N_POTS, InSituExtension, potbank::INSITU_REQUEST_MAX, potbank::INSITU_REPLY_MAX>
    controller({write_tap, read_tap, send, now_ms}, N_TAPS, BOARD_NAME);
#else
potbank::Controller<N_POTS> controller({write_tap, read_tap, send, now_ms}, N_TAPS, BOARD_NAME);
#endif

void setup() {
  uint8_t cause = reset_cause();
  for (uint16_t i = 0; i < N_POTS; i++) { digitalWrite(cs_pin(i), HIGH); pinMode(cs_pin(i), OUTPUT); }
  SPI.begin();
  Serial.begin(115200);
#ifdef POTBANK_INSITU
  front_end_begin();
#endif
  controller.begin(cause);  // parks, or reads the taps back and keeps them; sends BOOT
}

void loop() {
  while (Serial.available()) controller.receive((uint8_t)Serial.read());
  controller.tick();
#ifdef POTBANK_INSITU
  insitu.poll();  // the next step of a run, when the host's credit allows it
#endif
}
