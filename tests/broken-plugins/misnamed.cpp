// A correct plugin called 'thermo-probe', installed under another file name (misnamed.so).
#include "broken.hpp"

PILECORE_PLUGIN(broken::QuietSensor, {.name = "thermo-probe", .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0",
                                      .description = "Its file has the wrong name"})
