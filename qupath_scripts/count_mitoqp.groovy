/**
 * Count mitoqp's figures by class in the open image (or each image of a project) and colour them by class.
 *
 *   QuPath script -p project.qpproj -s count_mitoqp.groovy
 *
 * Prints one line per image: figures, atypical, normal, the hotspot's count and its Nottingham mitotic score
 * (absent where mitoqp withheld it: less tissue than the counted area); they also go into the image's root
 * measurements ("mitoqp figures", "mitoqp atypical", "mitoqp normal", "mitoqp hotspot", "mitoqp mitotic score"),
 * so QuPath's project summary can tabulate them. Classes get mitoqp's colours (red, magenta, orange, black).
 */
import qupath.lib.common.ColorTools
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass

def COLOURS = ['Mitotic figure': [255, 0, 0], 'Mitotic figure (atypical)': [255, 0, 255],
               'Mitotic figure (normal)': [255, 128, 0], 'Mitotic hotspot': [0, 0, 0]]
COLOURS.each { name, rgb -> PathClass.fromString(name).setColor(ColorTools.packRGB(rgb[0], rgb[1], rgb[2])) }
def cls = { PathObject p -> p.getPathClass()?.toString() }
def figures = getDetectionObjects().findAll { PathObject p -> !p.isTile() && cls(p)?.startsWith('Mitotic figure') }
def atypical = figures.count { cls(it) == 'Mitotic figure (atypical)' }
def normal = figures.count { cls(it) == 'Mitotic figure (normal)' }
def hotspot = getAnnotationObjects().find { cls(it) == 'Mitotic hotspot' }
def inHotspot = hotspot == null ? 0 : (hotspot.getMeasurementList().get('Mitotic figures') as double) as int
def score = hotspot == null ? Double.NaN : hotspot.getMeasurementList().get('Nottingham mitotic score') as double
def root = getCurrentHierarchy().getRootObject().getMeasurementList()
root.put('mitoqp figures', figures.size())
root.put('mitoqp atypical', atypical)
root.put('mitoqp normal', normal)
root.put('mitoqp hotspot', inHotspot)
if (!Double.isNaN(score))
    root.put('mitoqp mitotic score', score)
def scored = Double.isNaN(score) ? 'no mitotic score' : "mitotic score ${score as int}"
println "mitoqp counts: ${figures.size()} figures, ${atypical} atypical, ${normal} normal, hotspot ${inHotspot}, ${scored}"
